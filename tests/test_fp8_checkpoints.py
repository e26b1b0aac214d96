"""FP8 checkpoints (block-quantized "fp8" and compressed-tensors per-channel) on tiny Qwen3 / Qwen3-MoE models.

Each FP8 checkpoint is checked against transformers running the same weights dequantized (fp32):
the torch reference dequantizes as it multiplies, so logits agree to fp32 rounding and greedy
tokens exactly. Configs and tensors that cannot be served exactly are refused at load, by name.
"""
from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
from engine_utils import LogitsRecorder, greedy, make_engine
from fp8_checkpoint import channel_config, write_fp8_checkpoint
from safetensors.torch import load_file, save_file
from test_model_parity import hf_logits
from test_tp import make_engine as make_tp_engine
from test_tp import run_script

from laminar.config import ModelConfig
from laminar.formats.fp8 import Fp8
from laminar.ops import torch_ops

KEEP = ("model.layers.1.self_attn.o_proj",)  # listed in the ignore list: stays fp32 in the FP8 checkpoint


@pytest.fixture(scope="module")
def fp8_checkpoints(tmp_path_factory, moe_checkpoint, dense_checkpoint, moe_checkpoint_5) -> dict:
    """name -> {"fp8": dir, "ref": dir}."""
    sources = {"moe": moe_checkpoint, "dense": dense_checkpoint}
    out = {f"{scheme}-{model}": write_fp8_checkpoint(src, tmp_path_factory.mktemp(f"{scheme}-{model}"), scheme, keep=KEEP)
           for scheme in ("block", "channel") for model, src in sources.items()}
    out["block-moe-split"] = write_fp8_checkpoint(moe_checkpoint, tmp_path_factory.mktemp("split"), "block",
                                                  keep=KEEP, split_scales=True)
    for scheme in ("block", "channel"):  # TP2 cuts every projection on a 16-row / 16-column block edge
        out[f"{scheme}-moe5"] = write_fp8_checkpoint(moe_checkpoint_5, tmp_path_factory.mktemp(f"{scheme}-moe5"),
                                                     scheme, block=(16, 16))
    return out


def generate(engine, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    recorder = LogitsRecorder(engine)
    params = greedy(n)
    engine.add_request("r", prompt, params)
    out: list[int] = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.extend(o.new_token_ids)
    return out, torch.stack(recorder.logits[id(params)])


@pytest.mark.parametrize("name", ["block-moe", "channel-moe", "block-dense", "channel-dense", "block-moe-split"])
@pytest.mark.parametrize("mode,groups", [("layered", 3), ("chunked", 1)])
def test_fp8_matches_transformers_dequantized(fp8_checkpoints, name, mode, groups):
    dirs = fp8_checkpoints[name]
    engine = make_engine(dirs["fp8"], schedule_mode=mode, max_num_batched_tokens=16, max_num_seqs=8,
                         num_stages=groups, group_token_thresholds=())
    model = engine.executor.runner.model
    assert model.layers[0].self_attn.qkv_proj.dtype == torch.float8_e4m3fn
    assert model.layers[1].self_attn.o_proj.dtype == torch.float32  # on the ignore list
    prompt = torch.randint(1, 257, (37,), generator=torch.Generator().manual_seed(3)).tolist()
    out, ours = generate(engine, prompt, 6)
    ref = hf_logits(dirs["ref"], prompt + out[:-1])[len(prompt) - 1:]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert out == ref.argmax(-1).tolist()


@pytest.mark.parametrize("name", ["block-moe5", "channel-moe5"])
def test_fp8_tp2_matches_tp1(fp8_checkpoints, name):
    """Scales shard with their weights: block scales along the block grid, channel scales by row."""
    model = fp8_checkpoints[name]["fp8"]
    expected = run_script(make_tp_engine(model, 1))
    assert run_script(make_tp_engine(model, 2)) == expected


def test_fp8_dummy_load_has_the_checkpoint_shapes(fp8_checkpoints):
    """load_format=dummy draws FP8 codes and scales of the real shapes (no safetensors read)."""
    real = make_engine(fp8_checkpoints["block-moe"]["fp8"])
    dummy = make_engine(fp8_checkpoints["block-moe"]["fp8"], load_format="dummy")
    shapes = {n: (p.dtype, p.shape) for n, p in real.executor.runner.model.named_parameters()}
    params = dict(dummy.executor.runner.model.named_parameters())
    assert {n: (p.dtype, p.shape) for n, p in params.items()} == shapes
    moe = dummy.executor.runner.model.layers[0].mlp
    assert moe.w13.dtype == torch.float8_e4m3fn and moe.w13_scales.shape == (8, 4, 3)  # 64 x 64 in 16 x 24 blocks
    dense = moe.w13.float() * 2e-4
    assert 0.01 < dense.std().item() < 0.03 and torch.all(moe.w13_scales == 2e-4)
    # one expert: 3 x 64 x 32 one-byte codes plus (4 x 3 + 4 x 2) float32 block scales
    assert dummy.expert_bytes == 3 * 64 * 32 + (4 * 3 + 4 * 2) * 4 == real.expert_bytes
    out, _ = generate(dummy, [5, 6, 7], 3)
    assert len(out) == 3


def test_dequantized_fp8_experts_give_the_same_tokens(fp8_checkpoints):
    model = fp8_checkpoints["block-moe"]["fp8"]
    packed, _ = generate(make_engine(model), list(range(3, 40)), 5)
    engine = make_engine(model, dequantize_experts=True)
    assert engine.executor.runner.model.layers[0].mlp.w13.dtype == torch.float32
    assert generate(engine, list(range(3, 40)), 5)[0] == packed


def rewrite(dirs: dict, tmp_path, drop: str | None = None, config=None):
    """A copy of an FP8 checkpoint without one tensor and / or with another quantization_config."""
    out = tmp_path / "ckpt"
    out.mkdir()
    tensors = load_file(dirs["fp8"] / "model.safetensors")
    tensors.pop(drop, None)
    save_file(tensors, str(out / "model.safetensors"))
    cfg = json.loads((dirs["fp8"] / "config.json").read_text())
    if config is not None:
        cfg["quantization_config"] = config(cfg["quantization_config"])
        if cfg["quantization_config"] is None:
            del cfg["quantization_config"]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_missing_scales_are_refused(fp8_checkpoints, tmp_path):
    ckpt = rewrite(fp8_checkpoints["block-moe"], tmp_path, drop="model.layers.2.mlp.experts.5.up_proj.weight_scale_inv")
    with pytest.raises(ValueError, match=r"model\.layers\.2\.mlp\.experts\.5\.up_proj\.weight is FP8 but its scales "
                                         r"model\.layers\.2\.mlp\.experts\.5\.up_proj\.weight_scale_inv are in no"):
        make_engine(ckpt)


def test_fp8_tensors_without_quantization_config_are_refused(fp8_checkpoints, tmp_path):
    """What happened before: FP8 codes copied in unscaled, every token wrong."""
    ckpt = rewrite(fp8_checkpoints["channel-moe"], tmp_path, config=lambda q: None)
    with pytest.raises(ValueError, match=r"model\.layers\.0\..*\.weight is FP8 \(F8_E4M3\), but config\.json's "
                                         r"quantization_config \(none\) describes no FP8 weights"):
        make_engine(ckpt)


def test_fp8_weights_of_an_ignored_module_are_refused(fp8_checkpoints, tmp_path):
    ckpt = rewrite(fp8_checkpoints["block-dense"], tmp_path, config=lambda q: {
        **q, "modules_to_not_convert": q["modules_to_not_convert"] + ["model.layers.0.mlp.down_proj"]})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.down_proj\.weight is torch\.float8_e4m3fn, but "
                                         r".* makes layers\.0\.mlp\.down_proj torch\.float32"):
        make_engine(ckpt)


def test_unquantized_weights_under_an_fp8_config_are_refused(fp8_checkpoints, tmp_path):
    """The ignore list says o_proj of layer 1 is FP8-free; without that entry it must hold FP8 codes."""
    ckpt = rewrite(fp8_checkpoints["block-moe"], tmp_path, config=lambda q: {
        **q, "modules_to_not_convert": ["lm_head", "model.embed_tokens"]})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.o_proj\.weight is torch\.float32, but .* "
                                         r"makes layers\.1\.self_attn\.o_proj torch\.float8_e4m3fn"):
        make_engine(ckpt)


QWEN3 = {"architectures": ["Qwen3MoeForCausalLM"], "vocab_size": 257, "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8,
         "num_experts_per_tok": 2, "moe_intermediate_size": 32}
CHANNEL = channel_config([])


def channel(path: str, value) -> dict:
    """The compressed-tensors config with one field (dotted path under group_0) replaced."""
    cfg = json.loads(json.dumps(CHANNEL))
    node = cfg["config_groups"]["group_0"]
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return cfg


@pytest.mark.parametrize("qcfg, message", [
    ({"quant_method": "awq", "bits": 4}, r"quantization 'awq' is not supported \(supported: mxfp4, fp8, compressed"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, r"'fp8' with weight_block_size None .*per-tensor"),
    ({"quant_method": "fp8", "activation_scheme": "static", "weight_block_size": [128, 128]},
     r"'fp8' with activation_scheme 'static' is not supported"),
    ({"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128, 128]}, r"'fp8' with fmt 'e5m2'"),
    ({"quant_method": "mxfp4"}, r"quantization 'mxfp4' is not supported for Qwen3MoeForCausalLM"),
    (channel("weights.type", "int"), r"'compressed-tensors' with group_0 weights .*'int'"),
    (channel("weights.strategy", "tensor"), r"'compressed-tensors' with weight strategy 'tensor'"),
    (channel("input_activations.dynamic", False), r"'compressed-tensors' with group_0 input_activations"),
    (channel("targets", ["re:.*mlp.*"]), r"group_0 targets"),
    ({**CHANNEL, "kv_cache_scheme": {"num_bits": 8, "type": "float"}}, r"kv_cache_scheme"),
    ({**CHANNEL, "format": "pack-quantized"}, r"format 'pack-quantized'"),
])
def test_unsupported_quantization_configs_are_refused(qcfg, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**QWEN3, "quantization_config": qcfg})


def test_gpt_oss_refuses_fp8():
    cfg = {"architectures": ["GptOssForCausalLM"], "vocab_size": 257, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "head_dim": 16, "intermediate_size": 64, "num_local_experts": 8,
           "num_experts_per_tok": 2, "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    with pytest.raises(ValueError, match=r"'fp8' is not supported for GptOssForCausalLM"):
        ModelConfig.from_dict(cfg)


def test_fused_projections_must_agree():
    qcfg = {"quant_method": "fp8", "weight_block_size": [128, 128], "modules_to_not_convert": ["model.layers.0.self_attn.k_proj"]}
    quant = ModelConfig.from_dict({**QWEN3, "quantization_config": qcfg}).quantization
    with pytest.raises(ValueError, match=r"quantizes some of .*q_proj, .*k_proj, .*v_proj but not all"):
        quant.format_of(*(f"model.layers.0.self_attn.{p}_proj" for p in "qkv"))
    assert not quant.format_of("model.layers.0.self_attn.k_proj").quantized
    assert quant.format_of("model.layers.1.self_attn.k_proj") == Fp8((128, 128), "weight_scale_inv")


def test_block_scales_shard_on_block_edges_only():
    fmt = Fp8((16, 24), "weight_scale_inv")
    assert fmt.scale_index((3, slice(32, 64)), 3) == (3, slice(2, 4))  # expert 3, rows 32..64
    assert fmt.scale_index((slice(16, 40),), 2) == (slice(1, 3),)  # rows 16..40: a ragged last block
    with pytest.raises(ValueError, match="off its 24-wide scale blocks"):
        fmt.scale_index((slice(None), slice(32, 64)), 2)
    assert Fp8(None, "weight_scale").scale_index((slice(8, 16), slice(32, 64)), 2) == (slice(8, 16), slice(None))


def test_kernels_take_128_blocks_only():
    """On CUDA the FP8 kernels index 128x128 scale blocks: other blocks are refused after loading, not mid-step."""
    w, s = Fp8((16, 24), "weight_scale_inv").allocate(32, 48)
    kernels = types.ModuleType("laminar_kernels")
    with pytest.raises(ValueError, match="FP8 scale blocks of 16x24: the FP8 kernels read 128x128"):
        Fp8((16, 24), "weight_scale_inv").post_load(kernels, w, s)
    assert Fp8((16, 24), "weight_scale_inv").post_load(torch_ops, w, s) == (w, s)
    assert Fp8((128, 128), "weight_scale_inv").post_load(kernels, w, s) == (w, s)


@pytest.mark.parametrize("name, scales", [("qwen3-30b-a3b-fp8", (128, 12, 16)), ("qwen3-30b-a3b-fp8-dynamic", (128, 1536, 1))])
def test_perf_fp8_configs_give_the_release_shapes(name, scales):
    """perf/models' FP8 configs (benchmarks load them with load_format=dummy): a layer of the real model,
    allocated on the meta device, holds FP8 experts and attention with scales of the release's shapes."""
    from pathlib import Path

    from laminar.distributed import ShardLayout, TensorParallel
    from laminar.models import Qwen3ForCausalLM
    from laminar.ops import torch_ops

    cfg = ModelConfig.from_dir(Path(__file__).parents[1] / "perf" / "models" / name)
    cfg = dataclasses.replace(cfg, num_layers=1)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg, torch_ops, 16, TensorParallel())
    layer = model.layers[0]
    assert layer.mlp.w13.dtype == layer.self_attn.qkv_proj.dtype == torch.float8_e4m3fn
    assert layer.mlp.w13_scales.shape == scales and layer.mlp.gate.dtype != torch.float8_e4m3fn
    scale_bytes = 4 * (layer.mlp.w13_scales[0].numel() + layer.mlp.w2_scales[0].numel())
    assert model.expert_bytes() == 3 * 2048 * 768 + scale_bytes  # half the bf16 expert, plus its scales
    assert ShardLayout.of(cfg, TensorParallel(0, 2)).moe_intermediate_size % 128 == 0  # TP2 cuts on block edges


def test_cuts_off_the_scale_blocks_are_refused_on_every_rank(fp8_checkpoints):
    """Found while the model is built (every rank, rank 0 included), not while one worker loads its shard."""
    from laminar.distributed import TensorParallel
    from laminar.models import Qwen3ForCausalLM

    cfg = ModelConfig.from_dir(fp8_checkpoints["block-moe"]["fp8"])  # 16 x 24 blocks
    with torch.device("meta"):
        Qwen3ForCausalLM(cfg, torch_ops, 16, TensorParallel(0, 1))
        with pytest.raises(ValueError, match=r"FP8 o_proj: pieces of 32 columns .* not whole 24-wide scale blocks"):
            Qwen3ForCausalLM(cfg, torch_ops, 16, TensorParallel(0, 2))

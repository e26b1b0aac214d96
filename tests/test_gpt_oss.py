"""GPT-OSS beyond greedy parity (tests/test_model_parity.py): config, RoPE, test fixture, MXFP4 fallback, accounting."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from engine_utils import LogitsRecorder, greedy, make_engine, run_to_completion
from transformers import GptOssConfig, GptOssForCausalLM
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts, GptOssRotaryEmbedding

from laminar.config import FULL_ATTENTION, SUPPORTED_ARCHITECTURES, ModelConfig
from laminar.models import ARCHITECTURES
from laminar.models.rotary import RotaryCache
from laminar.ops.torch_ops import dequantize_mxfp4

REPO = Path(__file__).resolve().parents[1]
PROMPT = torch.randint(1, 257, (37,), generator=torch.Generator().manual_seed(3)).tolist()


def test_20b_config() -> None:
    cfg = ModelConfig.from_dir(REPO / "perf/models/gpt-oss-20b")
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (24, 2880, 64, 8, 64)
    assert (cfg.vocab_size, cfg.num_experts, cfg.top_k, cfg.moe_intermediate_size) == (201088, 32, 4, 2880)
    assert cfg.layer_windows == (128, FULL_ATTENTION) * 12 and cfg.quantization.method == "mxfp4"
    assert (cfg.swiglu_alpha, cfg.swiglu_limit, cfg.yarn.factor, cfg.yarn.truncate) == (1.702, 7.0, 32.0, False)


def test_yarn_table_matches_transformers() -> None:
    """The 20B's YaRN (factor 32 over 4096 positions, theta 150000) at positions past the original context."""
    hf = GptOssConfig(**json.loads((REPO / "perf/models/gpt-oss-20b/config.json").read_text()))
    cfg = ModelConfig.from_dir(REPO / "perf/models/gpt-oss-20b")
    positions = torch.arange(0, 8192, 7)
    cos, sin = GptOssRotaryEmbedding(hf)(torch.zeros(1), positions[None])
    ours = RotaryCache(cfg.head_dim, 8192, cfg.rope_theta, cfg.yarn).cos_sin[positions]
    torch.testing.assert_close(ours, torch.cat((cos[0], sin[0]), -1), rtol=0, atol=0)


def test_fixture_exercises_window_sinks_biases_and_clamp(gpt_oss_bf16) -> None:
    """The parity tests only mean something if the tiny model leans on what GPT-OSS adds."""
    model = GptOssForCausalLM.from_pretrained(gpt_oss_bf16, dtype=torch.float32).eval()
    cfg = model.config
    assert cfg.sliding_window < len(PROMPT) and "sliding_attention" in cfg.layer_types
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.sinks.abs().mean() > 0.5 and attn.o_proj.bias.abs().mean() > 0.2
    assert mlp.router.bias.abs().mean() > 0.2 and mlp.experts.gate_up_proj_bias.abs().mean() > 0.2
    seen: list[torch.Tensor] = []
    apply_gate = GptOssExperts._apply_gate

    def record(self, gate_up: torch.Tensor) -> torch.Tensor:
        seen.append(gate_up.detach())
        return apply_gate(self, gate_up)

    GptOssExperts._apply_gate = record
    try:
        with torch.no_grad():
            model(torch.tensor([PROMPT]))
    finally:
        GptOssExperts._apply_gate = apply_gate
    clamped = (torch.cat([s.flatten() for s in seen]).abs() > cfg.swiglu_limit).float().mean().item()
    assert 0.05 < clamped < 0.5, clamped


def _greedy_logits(model_dir: Path, **overrides) -> tuple[list[int], torch.Tensor, object]:
    engine = make_engine(model_dir, schedule_mode="chunked", max_num_batched_tokens=16, max_num_seqs=8, **overrides)
    recorder = LogitsRecorder(engine)
    params = greedy(4)
    out = run_to_completion(engine, {0: [("r", PROMPT, params)]})["r"]
    return out, torch.stack(recorder.logits[id(params)]), engine


def test_dequantized_experts_match_packed(gpt_oss_mxfp4) -> None:
    """dequantize_experts (the load-time fallback) computes what the packed experts do, at 4.25 / 32 of the bytes."""
    packed_out, packed, packed_engine = _greedy_logits(gpt_oss_mxfp4)
    dense_out, dense, dense_engine = _greedy_logits(gpt_oss_mxfp4, dequantize_experts=True)
    assert packed_out == dense_out
    torch.testing.assert_close(packed, dense, rtol=1e-5, atol=1e-5)
    cfg = packed_engine.model_config
    values = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    assert packed_engine.expert_bytes == values * 17 // 32 and dense_engine.expert_bytes == values * 4


def test_dequantize_mxfp4_matches_transformers() -> None:
    """Our reference decoding of the release's blocks / scales is transformers' (which returns x @ W matrices)."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 40, 4, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(100, 140, (3, 40, 4), dtype=torch.uint8, generator=gen)
    ref = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).transpose(1, 2)
    assert torch.equal(dequantize_mxfp4(blocks, scales, torch.float32), ref)


def test_every_supported_architecture_has_a_model() -> None:
    assert set(ARCHITECTURES) == set(SUPPORTED_ARCHITECTURES)

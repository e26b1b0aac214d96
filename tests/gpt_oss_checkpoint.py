"""Tiny random GPT-OSS checkpoints in the release's MXFP4 format and as plain bf16, from one model.

The expert weights are drawn as MXFP4 codes (random e2m1 nibbles, random e8m0 exponents) and
written as the release stores them: `*_blocks` uint8 [E, rows, cols/32, 16] and `*_scales`
uint8 [E, rows, cols/32], gate and up rows interleaved, every other tensor bf16, and a
`quantization_config` naming mxfp4. The bf16 checkpoint holds the same experts dequantized by
transformers' own MXFP4 code (exact in bf16), so both checkpoints are one model. The config is
chosen to exercise what GPT-OSS adds: windows shorter than the test prompts, sizeable sinks
and biases, YaRN, and gate / up projections that often pass the SwiGLU clamp.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# (low, high) exponents of the experts' scales: gate / up large enough that |x| > 7 is common.
GATE_UP_EXPONENTS = (123, 126)
DOWN_EXPONENTS = (118, 121)
MXFP4_CONFIG = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"],
}


def gpt_oss_config(num_layers: int = 4, **overrides):
    from transformers import GptOssConfig

    values = dict(
        vocab_size=257, hidden_size=64, num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=64, num_local_experts=8, num_experts_per_tok=4, sliding_window=8,
        max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=0,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 8.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 64},
    )
    values.update(overrides)
    return GptOssConfig(**values)


def _mxfp4(experts: int, rows: int, cols: int, exponents: tuple[int, int], gen: torch.Generator):
    blocks = torch.randint(0, 256, (experts, rows, cols // 32, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(exponents[0], exponents[1] + 1, (experts, rows, cols // 32), dtype=torch.uint8,
                           generator=gen)
    return blocks, scales


def write_gpt_oss_checkpoints(out: Path, seed: int = 0, **overrides) -> dict[str, Path]:
    """Writes out/mxfp4 and out/bf16; returns {"mxfp4": dir, "bf16": dir}."""
    from transformers import GptOssForCausalLM
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    config = gpt_oss_config(**overrides)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GptOssForCausalLM(config).float().eval()
    e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
    packed: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
            elif name.endswith(("bias", "sinks")):
                p.normal_(0.0, 0.5 if name.endswith("bias") else 1.0)
            else:
                p.normal_(0.0, 0.15)
        for n, layer in enumerate(model.model.layers):
            experts = layer.mlp.experts
            for proj, shape, exponents in (("gate_up_proj", (2 * i, h), GATE_UP_EXPONENTS),
                                           ("down_proj", (h, i), DOWN_EXPONENTS)):
                blocks, scales = _mxfp4(e, *shape, exponents, gen)
                getattr(experts, proj).copy_(convert_moe_packed_tensors(blocks, scales, dtype=torch.float32))
                packed[f"model.layers.{n}.mlp.experts.{proj}_blocks"] = blocks
                packed[f"model.layers.{n}.mlp.experts.{proj}_scales"] = scales
    model = model.to(torch.bfloat16)
    dirs = {"bf16": out / "bf16", "mxfp4": out / "mxfp4"}
    model.save_pretrained(dirs["bf16"], safe_serialization=True)
    model.save_pretrained(dirs["mxfp4"], safe_serialization=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()
               if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    for f in dirs["mxfp4"].glob("*.safetensors"):
        f.unlink()
    save_file({**tensors, **packed}, str(dirs["mxfp4"] / "model.safetensors"), metadata={"format": "pt"})
    cfg_path = dirs["mxfp4"] / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = MXFP4_CONFIG
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return dirs

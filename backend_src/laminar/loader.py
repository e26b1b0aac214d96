"""Fills a model's parameters from HF safetensors, or with random values of the real shapes.

HF names map onto our fused layout: q/k/v into one qkv matrix, gate/up into one
[2I, H] matrix per expert, experts stacked along a leading axis. Both the
per-expert checkpoint names and the stacked 3-D names (`experts.gate_up_proj`)
are accepted.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open

from laminar.models.qwen3 import Qwen3ForCausalLM

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def load_dummy(model: Qwen3ForCausalLM, seed: int) -> None:
    """Random weights (std 0.02; norms at 1), as vLLM's load_format=dummy, for benchmarks at real shapes."""
    gen = torch.Generator(device=model.embed_tokens.device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm", "layernorm")):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)


def load_safetensors(model: Qwen3ForCausalLM, model_dir: str | Path) -> None:
    """Copies every checkpoint tensor into its place and fails if any parameter stays unset."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"model: no *.safetensors files in {model_dir!s}")
    params = dict(model.named_parameters())
    filled: dict[str, int] = {}
    with torch.no_grad():
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    target = _target(model, name)
                    if target is None:
                        continue
                    pname, index = target
                    dest = params[pname]
                    for idx in index:
                        dest = dest[idx]
                    tensor = f.get_tensor(name)
                    if tensor.shape != dest.shape:
                        raise ValueError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
                    dest.copy_(tensor)
                    filled[pname] = filled.get(pname, 0) + dest.numel()
    missing = [n for n, p in params.items() if filled.get(n, 0) != p.numel()]
    if missing:
        raise ValueError(f"checkpoint in {model_dir!s} does not set: {', '.join(missing[:8])}")


def _target(model: Qwen3ForCausalLM, name: str) -> tuple[str, tuple] | None:
    """Our parameter name and the index into it (slices, expert) for one HF tensor name."""
    cfg = model.cfg
    if name == "model.embed_tokens.weight":
        return "embed_tokens", ()
    if name == "model.norm.weight":
        return "norm", ()
    if name == "lm_head.weight":
        return (None if cfg.tie_word_embeddings else ("lm_head", ()))
    m = _LAYER.match(name)
    if not m:
        return None
    layer, rest = int(m.group(1)), m.group(2)
    prefix = f"layers.{layer}."
    q = cfg.num_heads * cfg.head_dim
    kv = cfg.num_kv_heads * cfg.head_dim
    simple = {
        "input_layernorm.weight": "input_layernorm",
        "post_attention_layernorm.weight": "post_attention_layernorm",
        "self_attn.o_proj.weight": "self_attn.o_proj",
        "self_attn.q_norm.weight": "self_attn.q_norm",
        "self_attn.k_norm.weight": "self_attn.k_norm",
        "mlp.gate.weight": "mlp.gate",
        "mlp.experts.gate_up_proj": "mlp.w13",
        "mlp.experts.down_proj": "mlp.w2",
        "mlp.down_proj.weight": "mlp.down_proj",
    }
    if rest in simple:
        return prefix + simple[rest], ()
    qkv_rows = {"q_proj": slice(0, q), "k_proj": slice(q, q + kv), "v_proj": slice(q + kv, q + 2 * kv)}
    for proj, rows in qkv_rows.items():
        if rest == f"self_attn.{proj}.weight":
            return prefix + "self_attn.qkv_proj", (rows,)
    inter = cfg.intermediate_size
    if rest == "mlp.gate_proj.weight":
        return prefix + "mlp.gate_up_proj", (slice(0, inter),)
    if rest == "mlp.up_proj.weight":
        return prefix + "mlp.gate_up_proj", (slice(inter, 2 * inter),)
    e = _EXPERT.match(rest)
    if e:
        expert, proj = int(e.group(1)), e.group(2)
        moe_i = cfg.moe_intermediate_size
        if proj == "down_proj":
            return prefix + "mlp.w2", (expert,)
        rows = slice(0, moe_i) if proj == "gate_proj" else slice(moe_i, 2 * moe_i)
        return prefix + "mlp.w13", (expert, rows)
    return None

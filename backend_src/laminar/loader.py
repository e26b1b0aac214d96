"""Fills a model's parameters from HF safetensors, or with random values of the real shapes.

HF names map onto our fused layout: q/k/v into one qkv matrix, gate/up into one
[2I, H] matrix per expert, experts stacked along a leading axis. Both the
per-expert checkpoint names and the stacked 3-D names (`experts.gate_up_proj`)
are accepted. Under tensor parallelism each rank reads only its shard of every
tensor (safetensors slices lazily), following the model's ShardLayout.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open

from laminar.models.qwen3 import Qwen3ForCausalLM

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_REPLICATED = ("norm", "layernorm", "mlp.gate")  # identical on every rank (the router included)
ALL = slice(None)

# (our parameter name, index into it, index into the HF tensor)
Placement = tuple[str, tuple, tuple]


def load_dummy(model: Qwen3ForCausalLM, seed: int) -> None:
    """Random weights (std 0.02; norms at 1), as vLLM's load_format=dummy, for benchmarks at real shapes.

    Shards draw from a per-rank stream; replicated tensors (the router) from a shared one,
    so that every rank routes tokens to the same experts.
    """
    device = model.embed_tokens.device
    shared = torch.Generator(device=device).manual_seed(seed)
    own = torch.Generator(device=device).manual_seed(seed + 1 + model.tp.rank)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm", "layernorm")):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=shared if name.endswith(_REPLICATED) else own)


def load_safetensors(model: Qwen3ForCausalLM, model_dir: str | Path) -> None:
    """Copies this rank's part of every checkpoint tensor into place; fails if any parameter stays unset."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"model: no *.safetensors files in {model_dir!s}")
    params = dict(model.named_parameters())
    filled: dict[str, int] = {}
    vocab_params = [n for n in ("embed_tokens", "lm_head") if n in params]
    with torch.no_grad():
        for n in vocab_params:
            params[n].zero_()  # the last rank's vocabulary padding rows stay zero
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    for pname, dest_index, src_index in _placements(model, name):
                        dest = params[pname][dest_index]
                        tensor = f.get_slice(name)[src_index] if src_index else f.get_tensor(name)
                        if tensor.shape != dest.shape:
                            raise ValueError(
                                f"checkpoint tensor {name} gives shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
                            )
                        dest.copy_(tensor)
                        filled[pname] = filled.get(pname, 0) + dest.numel()
    expected = {n: p.numel() for n, p in params.items()}
    rows = _vocab_rows(model)
    for n in vocab_params:
        expected[n] = (rows.stop - rows.start) * model.cfg.hidden_size
    missing = [n for n in params if filled.get(n, 0) != expected[n]]
    if missing:
        raise ValueError(f"checkpoint in {model_dir!s} does not set: {', '.join(missing[:8])}")


def _vocab_rows(model: Qwen3ForCausalLM) -> slice:
    """The vocabulary rows this rank holds (the last rank's range may be short)."""
    layout, vocab = model.layout, model.cfg.vocab_size
    start = min(layout.vocab_start, vocab)
    return slice(start, min(start + layout.vocab_per_rank, vocab))


def _part(index: int, size: int) -> slice:
    return slice(index * size, (index + 1) * size)


def _placements(model: Qwen3ForCausalLM, name: str) -> list[Placement]:
    """Where this rank's part of one HF tensor goes; [] for tensors the model does not use."""
    cfg, layout, rank = model.cfg, model.layout, model.tp.rank
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            return []
        rows = _vocab_rows(model)
        pname = "embed_tokens" if name.startswith("model.") else "lm_head"
        return [(pname, (slice(0, rows.stop - rows.start),), (rows,))]
    if name == "model.norm.weight":
        return [("norm", (), ())]
    m = _LAYER.match(name)
    if not m:
        return []
    prefix, rest = f"layers.{m.group(1)}.", m.group(2)
    replicated = {
        "input_layernorm.weight": "input_layernorm",
        "post_attention_layernorm.weight": "post_attention_layernorm",
        "self_attn.q_norm.weight": "self_attn.q_norm",
        "self_attn.k_norm.weight": "self_attn.k_norm",
        "mlp.gate.weight": "mlp.gate",
    }
    if rest in replicated:
        return [(prefix + replicated[rest], (), ())]
    q = layout.num_heads * cfg.head_dim
    kv = layout.num_kv_heads * cfg.head_dim
    q_rows, kv_rows = _part(rank, q), _part(layout.kv_part, kv)
    qkv = {
        "q_proj": (slice(0, q), q_rows),
        "k_proj": (slice(q, q + kv), kv_rows),
        "v_proj": (slice(q + kv, q + 2 * kv), kv_rows),
    }
    for proj, (dest_rows, src_rows) in qkv.items():
        if rest == f"self_attn.{proj}.weight":
            return [(prefix + "self_attn.qkv_proj", (dest_rows,), (src_rows,))]
    if rest == "self_attn.o_proj.weight":
        return [(prefix + "self_attn.o_proj", (), (ALL, q_rows))]
    inter = layout.intermediate_size
    dense = {"gate_proj": slice(0, inter), "up_proj": slice(inter, 2 * inter)}
    for proj, dest_rows in dense.items():
        if rest == f"mlp.{proj}.weight":
            return [(prefix + "mlp.gate_up_proj", (dest_rows,), (_part(rank, inter),))]
    if rest == "mlp.down_proj.weight":
        return [(prefix + "mlp.down_proj", (), (ALL, _part(rank, inter)))]
    return _expert_placements(prefix, rest, layout.moe_intermediate_size, cfg.moe_intermediate_size, rank)


def _expert_placements(prefix: str, rest: str, local: int, full: int, rank: int) -> list[Placement]:
    """Per-expert names ([I, H] / [H, I] each) and stacked names ([E, 2I, H] / [E, H, I])."""
    own = _part(rank, local)
    up = slice(full + rank * local, full + (rank + 1) * local)
    gate_dest, up_dest = slice(0, local), slice(local, 2 * local)
    if rest == "mlp.experts.gate_up_proj":
        return [(prefix + "mlp.w13", (ALL, gate_dest), (ALL, own)),
                (prefix + "mlp.w13", (ALL, up_dest), (ALL, up))]
    if rest == "mlp.experts.down_proj":
        return [(prefix + "mlp.w2", (), (ALL, ALL, own))]
    e = _EXPERT.match(rest)
    if not e:
        return []
    expert, proj = int(e.group(1)), e.group(2)
    if proj == "down_proj":
        return [(prefix + "mlp.w2", (expert,), (ALL, own))]
    return [(prefix + "mlp.w13", (expert, gate_dest if proj == "gate_proj" else up_dest), (own,))]

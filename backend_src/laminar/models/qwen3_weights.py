"""Qwen3 / Qwen3-MoE checkpoint names -> our fused layout.

q/k/v go into one qkv matrix, gate/up into one [2I, H] matrix per expert, experts stacked
along a leading axis. Both the per-expert checkpoint names and the stacked 3-D names
(`experts.gate_up_proj`) are accepted.
"""
from __future__ import annotations

import re

from laminar.models.placements import ALL, Placement, part, placements, qkv_rows

_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_REPLICATED = {
    "input_layernorm.weight": "input_layernorm",
    "post_attention_layernorm.weight": "post_attention_layernorm",
    "self_attn.q_norm.weight": "self_attn.q_norm",
    "self_attn.k_norm.weight": "self_attn.k_norm",
    "mlp.gate.weight": "mlp.gate",
}


def qwen3_placements(model, name: str) -> list[Placement]:
    """Where this rank's part of one HF tensor goes; [] for tensors the model does not use."""
    return placements(model, name, _REPLICATED, _layer_placements)


def _layer_placements(model, prefix: str, rest: str) -> list[Placement]:
    rank, layout = model.tp.rank, model.layout
    qkv = qkv_rows(model)
    for proj, (dest_rows, src_rows) in qkv.items():
        if rest == f"self_attn.{proj}.weight":
            return [Placement(prefix + "self_attn.qkv_proj", (dest_rows,), (src_rows,))]
    if rest == "self_attn.o_proj.weight":
        return [Placement(prefix + "self_attn.o_proj", (), (ALL, qkv["q_proj"][1]))]
    inter = layout.intermediate_size
    dense = {"gate_proj": slice(0, inter), "up_proj": slice(inter, 2 * inter)}
    for proj, dest_rows in dense.items():
        if rest == f"mlp.{proj}.weight":
            return [Placement(prefix + "mlp.gate_up_proj", (dest_rows,), (part(rank, inter),))]
    if rest == "mlp.down_proj.weight":
        return [Placement(prefix + "mlp.down_proj", (), (ALL, part(rank, inter)))]
    return _expert_placements(prefix, rest, layout.moe_intermediate_size, model.cfg.moe_intermediate_size, rank)


def _expert_placements(prefix: str, rest: str, local: int, full: int, rank: int) -> list[Placement]:
    """Per-expert names ([I, H] / [H, I] each) and stacked names ([E, 2I, H] / [E, H, I])."""
    own = part(rank, local)
    up = slice(full + rank * local, full + (rank + 1) * local)
    gate_dest, up_dest = slice(0, local), slice(local, 2 * local)
    if rest == "mlp.experts.gate_up_proj":
        return [Placement(prefix + "mlp.w13", (ALL, gate_dest), (ALL, own)),
                Placement(prefix + "mlp.w13", (ALL, up_dest), (ALL, up))]
    if rest == "mlp.experts.down_proj":
        return [Placement(prefix + "mlp.w2", (), (ALL, ALL, own))]
    e = _EXPERT.match(rest)
    if not e:
        return []
    expert, proj = int(e.group(1)), e.group(2)
    if proj == "down_proj":
        return [Placement(prefix + "mlp.w2", (expert,), (ALL, own))]
    return [Placement(prefix + "mlp.w13", (expert, gate_dest if proj == "gate_proj" else up_dest), (own,))]

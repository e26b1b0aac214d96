"""GPT-OSS checkpoint names -> our layout, for the release's MXFP4 experts and for plain bf16 checkpoints.

The checkpoint interleaves gate and up (column / row 2j is gate j, 2j + 1 up j); we split them
into gate | up halves, which for MXFP4 is a permutation of whole rows of blocks and scales (each
row's scales cover only that row). Dense experts are stored as `x @ W` matrices ([E, H, 2I],
[E, I, H]) and are transposed to our [out, in] layout. Row-parallel biases (o_proj, the
experts' down projection) are read by rank 0 only (see laminar.models.layers).
"""
from __future__ import annotations

import torch

from laminar.models.placements import ALL, Placement, part, placements, qkv_rows

_REPLICATED = {
    "input_layernorm.weight": "input_layernorm",
    "post_attention_layernorm.weight": "post_attention_layernorm",
    "mlp.router.weight": "mlp.gate",
    "mlp.router.bias": "mlp.gate_bias",
}
_RANK0 = {"self_attn.o_proj.bias": "self_attn.o_bias", "mlp.experts.down_proj_bias": "mlp.w2_bias"}


def _transposed(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(-1, -2)


def gpt_oss_placements(model, name: str) -> list[Placement]:
    """Where this rank's part of one checkpoint tensor goes; [] for tensors this rank does not hold."""
    return placements(model, name, _REPLICATED, _layer_placements)


def _layer_placements(model, prefix: str, rest: str) -> list[Placement]:
    if rest in _RANK0:
        return [Placement(prefix + _RANK0[rest], (), ())] if model.tp.rank == 0 else []
    qkv = qkv_rows(model)
    for proj, (dest_rows, src_rows) in qkv.items():
        for kind, pname in (("weight", "qkv_proj"), ("bias", "qkv_bias")):
            if rest == f"self_attn.{proj}.{kind}":
                return [Placement(prefix + "self_attn." + pname, (dest_rows,), (src_rows,))]
    if rest == "self_attn.o_proj.weight":
        return [Placement(prefix + "self_attn.o_proj", (), (ALL, qkv["q_proj"][1]))]
    if rest == "self_attn.sinks":
        return [Placement(prefix + "self_attn.sinks", (), (part(model.tp.rank, model.layout.num_heads),))]
    if rest.startswith("mlp.experts."):
        return [p._replace(param=prefix + p.param) for p in _expert_placements(model, rest.removeprefix("mlp.experts."))]
    return []


def _expert_placements(model, rest: str) -> list[Placement]:
    local, rank = model.layout.moe_intermediate_size, model.tp.rank
    gate_dest, up_dest = slice(0, local), slice(local, 2 * local)
    # This rank's gate j sits at interleaved index 2 (rank * local + j), its up j one after.
    gate_src = slice(2 * rank * local, 2 * (rank + 1) * local, 2)
    up_src = slice(gate_src.start + 1, gate_src.stop, 2)
    halves = [(gate_dest, gate_src), (up_dest, up_src)]
    if rest in ("gate_up_proj_blocks", "gate_up_proj_scales"):
        pname = "mlp.w13" if rest.endswith("blocks") else "mlp.w13_scales"
        return [Placement(pname, (ALL, dest), (ALL, src)) for dest, src in halves]
    if rest == "gate_up_proj_bias":
        return [Placement("mlp.w13_bias", (ALL, dest), (ALL, src)) for dest, src in halves]
    if rest == "gate_up_proj":
        return [Placement("mlp.w13", (ALL, dest), (ALL, ALL, src), _transposed) for dest, src in halves]
    if rest in ("down_proj_blocks", "down_proj_scales"):
        pname = "mlp.w2" if rest.endswith("blocks") else "mlp.w2_scales"
        return [Placement(pname, (), (ALL, ALL, part(rank, local // 32)))]
    if rest == "down_proj":
        return [Placement("mlp.w2", (), (ALL, part(rank, local)), _transposed)]
    return []

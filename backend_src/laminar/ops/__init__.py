"""Op dispatch: the torch reference on CPU, the Triton kernels of `kernels/` on CUDA.

The engine's `ops` argument (torch|triton; LAMINAR_OPS) overrides the automatic choice (tests
use it to run the kernels under Triton's CPU interpreter, or the reference on a GPU); its
`attention` argument names the attention library of each path (attention_choice), its `moe`
argument the MXFP4 MoE library (MOE_CHOICES), and its flash_attn / flashinfer arguments keep those
libraries off the kernels (flashinfer=false: off its MoE too). Ops that fuse
what the reference does in steps (FUSED) can be switched back to their steps run by the separate
kernels (set_fused), which is how perf/bench_offline.py measures what the fusion buys.
"""
from __future__ import annotations

import functools
from types import ModuleType, SimpleNamespace

import torch

from laminar.ops import torch_ops
from laminar.ops.attention_choice import parse_attention
from laminar.ops.metadata import AttentionMetadata

OPS_CHOICES = ("auto", "torch", "triton")  # EngineArgs.ops: the reference, the kernels, or by device
# EngineArgs.moe: who runs MXFP4 experts on the kernels' path: the GPU's measured winner per token count
# (kernels/configs/moe.json), our Triton kernel always, or FlashInfer's CUTLASS MoE wherever it can.
MOE_CHOICES = ("auto", "triton", "flashinfer")

OP_NAMES = (
    "rms_norm", "add_rms_norm", "rope", "store_kv", "rope_store_kv", "paged_attention",
    "silu_and_mul", "route_topk", "fused_moe", "prepare_experts",
)

# Fused kernels and the reference that says how to run them as separate ops instead.
FUSED = {"rope_store_kv": torch_ops.rope_store_kv_from}


def get_ops(device: torch.device | str, choice: str = "auto", flash_attn: bool = True,
            flashinfer: bool = True, attention: str = "auto", moe: str = "auto") -> ModuleType | SimpleNamespace:
    """Every name in OP_NAMES for the given device: the torch reference module, or the kernels
    with the attention and MoE libraries chosen and switched as asked."""
    if choice not in OPS_CHOICES:
        raise ValueError(f"ops must be one of {OPS_CHOICES}, got {choice!r}")
    if moe not in MOE_CHOICES:
        raise ValueError(f"moe must be one of {MOE_CHOICES}, got {moe!r}")
    if choice == "torch" or (choice == "auto" and torch.device(device).type != "cuda"):
        return torch_ops
    import laminar_kernels

    ops = SimpleNamespace(**{name: value for name, value in vars(laminar_kernels).items() if not name.startswith("_")})
    excluded = frozenset(name for name, on in (("flash_attn", flash_attn), ("flashinfer", flashinfer)) if not on)
    ops.paged_attention = functools.partial(laminar_kernels.paged_attention, chosen=parse_attention(attention),
                                            excluded=excluded)
    ops.prepare_experts = functools.partial(laminar_kernels.prepare_experts, choice=moe if flashinfer else "triton")
    return ops


def set_fused(ops: ModuleType | SimpleNamespace, on: bool) -> None:
    """Kernel ops: each FUSED op as its fused kernel (on) or as its steps run by the separate kernels
    (off). Takes effect at the next call (CUDA graphs captured before keep what they captured). The
    torch reference does each op one way and is left as it is."""
    if ops is torch_ops:
        return
    import laminar_kernels

    for name, steps in FUSED.items():
        setattr(ops, name, getattr(laminar_kernels, name) if on else functools.partial(steps, ops))


__all__ = ["AttentionMetadata", "FUSED", "MOE_CHOICES", "OP_NAMES", "get_ops", "set_fused", "torch_ops"]

"""Op dispatch: the torch reference on CPU, the Triton kernels of `kernels/` on CUDA.

`LAMINAR_OPS=torch|triton` overrides the automatic choice (tests use it to run the
kernels under Triton's CPU interpreter, or the reference on a GPU).
"""
from __future__ import annotations

import os
from types import ModuleType

import torch

from laminar.ops import torch_ops
from laminar.ops.metadata import AttentionMetadata

OP_NAMES = (
    "rms_norm", "add_rms_norm", "rope", "store_kv", "paged_attention",
    "silu_and_mul", "route_topk", "fused_moe",
)


def get_ops(device: torch.device | str) -> ModuleType:
    """Returns a module exposing every name in OP_NAMES for the given device."""
    choice = os.environ.get("LAMINAR_OPS", "auto")
    if choice not in ("auto", "torch", "triton"):
        raise ValueError(f"LAMINAR_OPS must be auto, torch or triton, got {choice!r}")
    if choice == "torch" or (choice == "auto" and torch.device(device).type != "cuda"):
        return torch_ops
    import laminar_kernels

    return laminar_kernels


__all__ = ["AttentionMetadata", "OP_NAMES", "get_ops", "torch_ops"]

"""Gated activations: the in-register forms the MoE GEMM fuses, and SwiGLU (gate | up halves) for the dense MLP."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import jit_sized


@triton.jit
def silu_mul(gate, up):
    """silu(gate) * up, on fp32 tiles."""
    return gate / (1.0 + tl.exp(-gate)) * up


@triton.jit
def clamped_swiglu_mul(gate, up, alpha, limit):
    """GPT-OSS: (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g) with g = min(gate, limit), on fp32 tiles."""
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    return (up + 1.0) * gate / (1.0 + tl.exp(-alpha * gate))


@jit_sized("n_rows")
def _silu_and_mul_kernel(x_ptr, out_ptr, n_rows, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * inter + cols, silu_mul(gate, up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up on [..., 2I] -> [..., I], computed in fp32 and rounded once."""
    inter = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * inter).contiguous()
    out = torch.empty((x2.shape[0], inter), dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(max(inter, 1)))
    if x2.shape[0] and inter:
        _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(inter, block))](x2, out, x2.shape[0], inter, BLOCK=block)
    return out.view(*x.shape[:-1], inter)

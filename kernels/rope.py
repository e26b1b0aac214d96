"""Neox-style rotary embedding of q and k in one launch per tensor, reading strided views."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_pow2


@triton.jit
def _rope_kernel(
    x_ptr, out_ptr, pos_ptr, cs_ptr, n_heads, half,
    stride_xt, stride_xh, stride_cs, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    dmask = d < half
    cos = tl.load(cs_ptr + pos * stride_cs + d, mask=dmask, other=0.0).to(tl.float32)
    sin = tl.load(cs_ptr + pos * stride_cs + half + d, mask=dmask, other=0.0).to(tl.float32)
    mask = (heads[:, None] < n_heads) & dmask[None, :]
    src = x_ptr + tok * stride_xt + heads[:, None] * stride_xh + d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    dst = out_ptr + (tok * n_heads + heads[:, None]) * 2 * half + d[None, :]
    tl.store(dst, (x1 * cos[None, :] - x2 * sin[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + half, (x2 * cos[None, :] + x1 * sin[None, :]).to(out_ptr.dtype.element_ty), mask=mask)


def _rotate(x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    n_tok, n_heads, head_dim = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((n_tok, n_heads, head_dim), dtype=x.dtype, device=x.device)
    half = head_dim // 2
    block_d = next_pow2(half)
    block_h = min(next_pow2(n_heads), max(1, 4096 // block_d))
    if n_tok and n_heads:
        grid = (n_tok, triton.cdiv(n_heads, block_h))
        _rope_kernel[grid](
            x, out, positions, cos_sin, n_heads, half, x.stride(0), x.stride(1), cos_sin.stride(0),
            BLOCK_H=block_h, BLOCK_D=block_d,
        )
    return out


def rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns rotated copies of q [T, Hq, D] and k [T, Hk, D]; cos_sin is [max_pos, D] fp32 (cos | sin)."""
    return _rotate(q, positions, cos_sin), _rotate(k, positions, cos_sin)

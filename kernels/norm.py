"""RMSNorm and the fused residual-add + RMSNorm, one pass over each row in fp32."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import jit_sized, next_pow2


@jit_sized("n_rows")
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr, n_rows, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        # Round the sum to the storage dtype first: the reference normalises the rounded sum.
        x = (x.to(tl.float32) + tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(x.dtype)
        tl.store(sum_ptr + offs, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=1) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (xf * inv[:, None] * w[None, :]).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols).contiguous()
    out = torch.empty_like(x2)
    summed = torch.empty_like(x2) if residual is not None else out
    res2 = residual.reshape(-1, n_cols).contiguous() if residual is not None else x2
    n_rows = x2.shape[0]
    block_n = next_pow2(n_cols)
    # Pack short rows (per-head q/k norms) so one program still moves a few KB.
    block_r = max(1, min(16, 2048 // block_n))
    if n_rows:
        grid = (triton.cdiv(n_rows, block_r),)
        _rms_norm_kernel[grid](
            x2, res2, weight, out, summed, n_rows, n_cols, eps,
            HAS_RESIDUAL=residual is not None, BLOCK_R=block_r, BLOCK_N=block_n,
            num_warps=4 if block_n * block_r <= 4096 else 8,
        )
    return out.view(x.shape), summed.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension (any leading shape)."""
    return _launch(x, None, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual) reading each input once."""
    return _launch(x, residual, weight, eps)

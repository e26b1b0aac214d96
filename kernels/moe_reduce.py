"""Top-k reduction of the weighted expert outputs: one read of [T, k, H], fp32 sum, one write of [T, H]."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _topk_sum_kernel(src_ptr, out_ptr, hidden, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < hidden
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(src_ptr + (tok * TOP_K + j) * hidden + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + tok * hidden + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def topk_sum(partial: torch.Tensor, n_tok: int, top_k: int) -> torch.Tensor:
    """partial [T*k, H] (row t*k + j) -> [T, H] in partial's dtype."""
    hidden = partial.shape[1]
    out = torch.empty((n_tok, hidden), dtype=partial.dtype, device=partial.device)
    block = min(1024, triton.next_power_of_2(hidden))
    _topk_sum_kernel[(n_tok, triton.cdiv(hidden, block))](partial, out, hidden, TOP_K=top_k, BLOCK=block)
    return out

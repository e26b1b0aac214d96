"""Scatter of new keys/values into the paged KV cache."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_pow2


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, row_elems,
    stride_kt, stride_vt, stride_slot, BLOCK: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot >= 0:  # negative slots mark padding tokens that own no cache entry
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < row_elems
        k = tl.load(k_ptr + tok * stride_kt + offs, mask=mask)
        v = tl.load(v_ptr + tok * stride_vt + offs, mask=mask)
        tl.store(kc_ptr + slot * stride_slot + offs, k.to(kc_ptr.dtype.element_ty), mask=mask)
        tl.store(vc_ptr + slot * stride_slot + offs, v.to(vc_ptr.dtype.element_ty), mask=mask)


def _token_rows(x: torch.Tensor) -> torch.Tensor:
    """Keeps strided token views (a slice of a fused qkv) as long as each token's [Hk, D] is dense."""
    if x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]:
        return x
    return x.contiguous()


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Writes k/v [T, Hk, D] into caches [num_blocks, block_size, Hk, D] at flat slots."""
    k, v = _token_rows(k), _token_rows(v)
    row_elems = k.shape[1] * k.shape[2]
    assert k_cache.stride(1) == row_elems and k_cache.stride(0) == k_cache.shape[1] * row_elems
    block = min(2048, next_pow2(row_elems))
    if k.shape[0]:
        grid = (k.shape[0], triton.cdiv(row_elems, block))
        _store_kv_kernel[grid](
            k, v, k_cache, v_cache, slot_mapping, row_elems, k.stride(0), v.stride(0), row_elems, BLOCK=block,
        )

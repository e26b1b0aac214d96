"""Attention's steps between the qkv projection and attention in one pass: per-head q/k RMSNorm
(Qwen3's qk_norm, when weights are given), neox RoPE of q and k, and k, v into the paged cache.

Separately these are five launches per layer (two norms, two rotations, the store), each reading
and writing the token's heads again; in a decode step they are latency, not bandwidth, so the
launches and round trips are the cost. One program per token reads its q, k and v heads once
(strided views of the fused qkv are fine), writes the rotated queries and the cache slots.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_pow2


@triton.jit
def _normed(x1, x2, w_ptr, d, dmask, half, eps, NORM: tl.constexpr):
    """Both halves of [heads, D] rows RMS-normalised over D, rounded to the storage dtype as the
    separate norm's output is."""
    if NORM:
        inv = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half) + eps)
        w1 = tl.load(w_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + half + d, mask=dmask, other=0.0).to(tl.float32)
        x1 = x1 * inv[:, None] * w1[None, :]
        x2 = x2 * inv[:, None] * w2[None, :]
    return x1, x2


@triton.jit
def _rotated(src, stride_h, heads, n_heads, w_ptr, cos, sin, d, dmask, half, eps, NORM: tl.constexpr):
    """Loads [heads, D] rows at src, norms (NORM) and rotates them; returns both halves in the storage dtype."""
    mask = (heads[:, None] < n_heads) & dmask[None, :]
    ptrs = src + heads[:, None] * stride_h + d[None, :]
    raw1 = tl.load(ptrs, mask=mask, other=0.0)
    x1 = raw1.to(tl.float32)
    x2 = tl.load(ptrs + half, mask=mask, other=0.0).to(tl.float32)
    x1, x2 = _normed(x1, x2, w_ptr, d, dmask, half, eps, NORM)
    x1, x2 = x1.to(raw1.dtype).to(tl.float32), x2.to(raw1.dtype).to(tl.float32)
    return (x1 * cos[None, :] - x2 * sin[None, :]).to(raw1.dtype), (x2 * cos[None, :] + x1 * sin[None, :]).to(raw1.dtype)


@triton.jit
def _rope_store_kv_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, kc_ptr, vc_ptr, pos_ptr, slot_ptr, cs_ptr, qw_ptr, kw_ptr,
    n_q_heads, n_kv_heads, half, eps,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_cs,
    NORM: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < half
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    cos = tl.load(cs_ptr + pos * stride_cs + d, mask=dmask, other=0.0).to(tl.float32)
    sin = tl.load(cs_ptr + pos * stride_cs + half + d, mask=dmask, other=0.0).to(tl.float32)

    hq = tl.arange(0, BLOCK_HQ)
    q1, q2 = _rotated(q_ptr + tok * stride_qt, stride_qh, hq, n_q_heads, qw_ptr, cos, sin, d, dmask, half, eps, NORM)
    qmask = (hq[:, None] < n_q_heads) & dmask[None, :]
    dst = out_ptr + (tok * n_q_heads + hq[:, None]) * 2 * half + d[None, :]
    tl.store(dst, q1.to(out_ptr.dtype.element_ty), mask=qmask)
    tl.store(dst + half, q2.to(out_ptr.dtype.element_ty), mask=qmask)

    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot >= 0:  # negative slots mark padding tokens that own no cache entry
        hk = tl.arange(0, BLOCK_HK)
        k1, k2 = _rotated(k_ptr + tok * stride_kt, stride_kh, hk, n_kv_heads, kw_ptr, cos, sin, d, dmask, half, eps,
                          NORM)
        kmask = (hk[:, None] < n_kv_heads) & dmask[None, :]
        row = slot * n_kv_heads * 2 * half + hk[:, None] * 2 * half + d[None, :]
        tl.store(kc_ptr + row, k1.to(kc_ptr.dtype.element_ty), mask=kmask)
        tl.store(kc_ptr + row + half, k2.to(kc_ptr.dtype.element_ty), mask=kmask)
        vsrc = v_ptr + tok * stride_vt + hk[:, None] * stride_vh + d[None, :]
        tl.store(vc_ptr + row, tl.load(vsrc, mask=kmask).to(vc_ptr.dtype.element_ty), mask=kmask)
        tl.store(vc_ptr + row + half, tl.load(vsrc + half, mask=kmask).to(vc_ptr.dtype.element_ty), mask=kmask)


def _heads_dense(x: torch.Tensor) -> torch.Tensor:
    """Keeps strided token/head views (slices of a fused qkv) as long as each head's D values are dense."""
    return x if x.stride(-1) == 1 else x.contiguous()


def rope_store_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    q_norm: torch.Tensor | None = None, k_norm: torch.Tensor | None = None, eps: float = 0.0,
) -> torch.Tensor:
    """Same semantics as laminar.ops.torch_ops.rope_store_kv: returns the rotated q [T, Hq, D];
    k and v [T, Hk, D] land in caches [num_blocks, block_size, Hk, D] at slot_mapping's slots."""
    q, k, v = _heads_dense(q), _heads_dense(k), _heads_dense(v)
    n_tok, n_q_heads, head_dim = q.shape
    n_kv_heads = k.shape[1]
    assert head_dim % 2 == 0 and k_cache.is_contiguous() and v_cache.is_contiguous()
    assert k_cache.shape[2:] == (n_kv_heads, head_dim)
    out = torch.empty((n_tok, n_q_heads, head_dim), dtype=q.dtype, device=q.device)
    norm = q_norm is not None
    if n_tok:
        _rope_store_kv_kernel[(n_tok,)](
            q, k, v, out, k_cache, v_cache, positions, slot_mapping, cos_sin,
            q_norm if norm else cos_sin, k_norm if norm else cos_sin,
            n_q_heads, n_kv_heads, head_dim // 2, eps,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin.stride(0),
            NORM=norm, BLOCK_HQ=next_pow2(n_q_heads), BLOCK_HK=next_pow2(n_kv_heads), BLOCK_D=next_pow2(head_dim // 2),
            num_warps=4,
        )
    return out

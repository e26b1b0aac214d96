"""Paged causal attention for varlen batches (prefill chunks over cached prefixes, decodes mixed in).

Grid (row tile, seq, kv_head). A tile's BLOCK_M rows are (token, head) pairs of one KV
head's query-head group, token-major, so each KV tile read serves all its query heads
and a decode sequence fills `group` rows instead of one. Keys visible to every row of
the tile run unmasked; only the bands at the causal diagonal and at the sliding
window's lower edge pay for the mask, and tiles wholly below the window are never read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from .common import dot_precision, jit_sized, next_pow2

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata


@triton.jit
def _tile_step(
    q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, start, q_pos, q_lo, kv_lo, kv_hi, d, d_ok, qk_scale,
    stride_cb, stride_cs, stride_ch,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    """One KV tile of online softmax in the exp2 domain; MASKED applies causal, window and length limits.

    Masked tiles load no key outside [kv_lo, kv_hi), the tile's visible span: slots that left
    every row's window may hold anything (a freed page, a stale table entry).
    """
    t = start + tl.arange(0, BLOCK_N)
    if MASKED:
        t_ok = (t < kv_hi) & (t >= kv_lo)
        blk = tl.load(bt_row + t // PAGE, mask=t_ok, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_row + t // PAGE).to(tl.int64)
    kv_off = blk * stride_cb + (t % PAGE) * stride_cs + kvh * stride_ch
    if MASKED:
        kv_mask = t_ok[:, None] & d_ok[None, :]
    else:
        kv_mask = d_ok[None, :]
    k = tl.load(kc_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASKED:
        visible = (t[None, :] <= q_pos[:, None]) & (t[None, :] >= q_lo[:, None]) & t_ok[None, :]
        s = tl.where(visible, s, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # rows with nothing visible yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(vc_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def kv_bands(first_pos, last_pos, window, BLOCK_N: tl.constexpr):
    """KV bounds for query positions [first_pos, last_pos]: (kv_lo, lo, full_lo, full_hi).

    kv_lo is the lowest key any row sees. Tiles in [full_lo, full_hi) are visible to every
    row (no mask); [lo, full_lo) is the window's lower edge and [full_hi, last_pos] the
    causal diagonal, both masked. Tiles below lo lie wholly outside the window and are
    skipped (window 0: no window, everything from 0).
    """
    windowed = window > 0
    kv_lo = tl.where(windowed, tl.maximum(first_pos - window + 1, 0), 0)
    full_hi = (first_pos + 1) // BLOCK_N * BLOCK_N
    full_lo = tl.where(windowed, tl.cdiv(tl.maximum(last_pos - window + 1, 0), BLOCK_N) * BLOCK_N, 0)
    return kv_lo, kv_lo // BLOCK_N * BLOCK_N, tl.minimum(full_lo, full_hi), full_hi


@triton.jit
def softmax_init(sinks_ptr, head, BLOCK_M: tl.constexpr, HAS_SINKS: tl.constexpr):
    """Running (max, sum) before any key: a sink is a key of logit sinks[head] and value 0."""
    if HAS_SINKS:
        m_i = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    return m_i, l_i


@jit_sized("stride_bt")
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, out_ptr, bt_ptr, seq_lens_ptr, qsl_ptr, sinks_ptr,
    scale, head_dim, group, window,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    tile = tl.program_id(0)
    seq = tl.program_id(1)
    kvh = tl.program_id(2)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len * group:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx = seq_len - q_len
    r = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = r // group
    head = kvh * group + r % group
    r_ok = tok < q_len
    q_pos = ctx + tok
    q_lo = tl.where(window > 0, q_pos - window + 1, 0)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    row_mask = r_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + (q_start + tok).to(tl.int64)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=row_mask, other=0.0)
    qk_scale = scale * 1.4426950408889634
    m_i, l_i = softmax_init(sinks_ptr, head, BLOCK_M, HAS_SINKS)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
    first_pos = ctx + (tile * BLOCK_M) // group
    last_pos = tl.minimum(ctx + (tile * BLOCK_M + BLOCK_M - 1) // group, seq_len - 1)
    kv_lo, lo, full_lo, full_hi = kv_bands(first_pos, last_pos, window, BLOCK_N)
    kv_hi = last_pos + 1
    for start in range(lo, full_lo, BLOCK_N):
        acc, m_i, l_i = _tile_step(q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, start, q_pos, q_lo, kv_lo, kv_hi,
                                   d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, True, PRECISION)
    for start in range(full_lo, full_hi, BLOCK_N):
        acc, m_i, l_i = _tile_step(q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, start, q_pos, q_lo, kv_lo, kv_hi,
                                   d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, False, PRECISION)
    for start in range(full_hi, kv_hi, BLOCK_N):
        acc, m_i, l_i = _tile_step(q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, start, q_pos, q_lo, kv_lo, kv_hi,
                                   d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, True, PRECISION)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptr + (q_start + tok).to(tl.int64)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask)


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor, sinks: torch.Tensor | None = None, window: int = 0, block_m: int | None = None,
    block_n: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
) -> torch.Tensor:
    """Fills out [T, Hq, D] for any mix of prefill chunks and decodes."""
    _, page, n_kv_heads, head_dim = k_cache.shape
    group = q.shape[1] // n_kv_heads
    block_d = next_pow2(head_dim)
    on_gpu = q.is_cuda
    fp32 = q.dtype == torch.float32
    block_m = block_m or (128 if on_gpu and not fp32 else 64 if on_gpu else 32)
    block_n = block_n or (128 if on_gpu and block_d <= 128 and not fp32 else 32)
    grid = (triton.cdiv(meta.max_query_len * group, block_m), meta.num_seqs, n_kv_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, meta.block_tables, meta.seq_lens, meta.query_start_loc,
        q if sinks is None else sinks,
        scale, head_dim, group, window,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        PAGE=page, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION=dot_precision(q.dtype),
        HAS_SINKS=sinks is not None,
        num_warps=num_warps or (8 if block_m >= 128 else 4),
        num_stages=num_stages or (2 if block_n >= 128 or block_d > 128 else 3),
    )
    return out

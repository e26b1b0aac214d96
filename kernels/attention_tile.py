"""The online-softmax step over one paged KV tile, shared by the prefill and decode kernels.

Everything runs in the exp2 domain (log2(e) folded into the score scale, which must be
positive). The running max starts finite (a sink's logit, or NO_KEY), so a row whose
keys are all masked so far needs no NaN guard: its exp2 terms are 0, and the first
visible key rescales what came before by exp2(NO_KEY - m) = 0.
"""
from __future__ import annotations

import triton
import triton.language as tl

NO_KEY = tl.constexpr(-1.0e30)


@triton.jit
def softmax_init(sinks_ptr, head, BLOCK_M: tl.constexpr, HAS_SINKS: tl.constexpr):
    """Running (max, sum) before any key: a sink acts as one key of logit sinks[head] and value 0."""
    if HAS_SINKS:
        m_i = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
        l_i = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], NO_KEY, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    return m_i, l_i


@triton.jit
def tile_step(
    q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, start, q_pos, q_lo, kv_lo, kv_hi, d, d_ok, qk_scale,
    stride_cb, stride_cs, stride_ch,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr,
):
    """Folds keys [start, start + BLOCK_N) into (acc, m_i, l_i) for rows at positions q_pos.

    Unmasked tiles must be visible to every row. Masked tiles apply the causal limit (key <=
    q_pos), the window (key >= q_lo) and load nothing outside [kv_lo, kv_hi): slots past the
    context or below every row's window may hold anything (a freed page, a stale table entry).
    """
    t = start + tl.arange(0, BLOCK_N)
    if MASKED:
        t_ok = (t < kv_hi) & (t >= kv_lo)
        blk = tl.load(bt_row + t // PAGE, mask=t_ok, other=0).to(tl.int64)
        kv_mask = t_ok[:, None] & d_ok[None, :]
    else:
        blk = tl.load(bt_row + t // PAGE).to(tl.int64)
        kv_mask = d_ok[None, :]
    kv_off = blk * stride_cb + (t % PAGE) * stride_cs + kvh * stride_ch
    k = tl.load(kc_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if MASKED:
        visible = (t[None, :] <= q_pos[:, None]) & (t[None, :] >= q_lo[:, None]) & t_ok[None, :]
        s = tl.where(visible, s * qk_scale, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
    else:  # scale after the max: one multiply per row, then one FMA per score
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(vc_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0.0)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def attend_bands(
    q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, q_pos, q_lo, kv_lo, kv_hi, lo, full_lo, full_hi,
    d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch,
    PAGE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, LOWER_BAND: tl.constexpr,
):
    """Folds keys [lo, kv_hi) in three bands: [lo, full_lo) masked (the window's lower edge,
    compiled only with LOWER_BAND), [full_lo, full_hi) unmasked, [full_hi, kv_hi) masked."""
    if LOWER_BAND:
        for start in range(lo, full_lo, BLOCK_N):
            acc, m_i, l_i = tile_step(q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, start, q_pos, q_lo, kv_lo, kv_hi,
                                      d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, True,
                                      PRECISION)
    for start in range(full_lo, full_hi, BLOCK_N):
        acc, m_i, l_i = tile_step(q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, start, q_pos, q_lo, kv_lo, kv_hi,
                                  d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, False, PRECISION)
    for start in range(full_hi, kv_hi, BLOCK_N):
        acc, m_i, l_i = tile_step(q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, start, q_pos, q_lo, kv_lo, kv_hi,
                                  d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch, PAGE, BLOCK_N, True, PRECISION)
    return acc, m_i, l_i

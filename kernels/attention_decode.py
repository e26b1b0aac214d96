"""Paged decode attention (one query token per sequence), split-K over the context.

Grid (seq, kv_head, split): each program handles all query heads of one KV head (GQA),
so every KV tile is read from HBM once. Splits keep all SMs busy at small batch or long
context: they write fp32 partial outputs plus their log-sum-exp, and a reduce kernel
merges them and adds the attention sink, once per head. With one split (large batches)
the program writes the output itself and no reduce runs. A sliding window narrows the
range the splits share to the window's keys, so keys outside it are never read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from .attention_tile import attend_bands, softmax_init
from .common import device_sms, dot_precision, jit_sized, next_pow2

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata


@jit_sized("n_splits", "stride_bt")
def _decode_split_kernel(
    q_ptr, kc_ptr, vc_ptr, bt_ptr, seq_lens_ptr, qsl_ptr, part_o_ptr, part_lse_ptr, out_ptr, sinks_ptr,
    scale, head_dim, group, n_splits, window,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
    PAGE: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, HAS_SINKS: tl.constexpr, DIRECT: tl.constexpr, WINDOWED: tl.constexpr,
):
    seq = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    q_start = tl.load(qsl_ptr + seq)
    if tl.load(qsl_ptr + seq + 1) == q_start:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    kv_lo = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)  # first key in the window
    first = kv_lo // BLOCK_N * BLOCK_N
    per_split = tl.cdiv(tl.cdiv(seq_len - first, n_splits), BLOCK_N) * BLOCK_N
    lo = first + split * per_split
    hi = tl.minimum(lo + per_split, seq_len)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    g_ok = g < group
    d_ok = d < head_dim
    heads = kvh * group + g
    q = tl.load(q_ptr + q_start.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    qk_scale = scale * 1.4426950408889634  # exp2 domain
    m_i, l_i = softmax_init(sinks_ptr, heads, BLOCK_G, HAS_SINKS and DIRECT)  # else the sink joins in the merge
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    bt_row = bt_ptr + seq.to(tl.int64) * stride_bt
    q_pos = tl.full([BLOCK_G], seq_len - 1, dtype=tl.int32)
    q_lo = tl.full([BLOCK_G], kv_lo, dtype=tl.int32)
    # Whole tiles inside [kv_lo, seq_len) run unmasked; at most one masked tile at each end.
    full_lo = tl.minimum(tl.maximum(lo, tl.cdiv(kv_lo, BLOCK_N) * BLOCK_N), hi)
    full_hi = tl.maximum(tl.minimum(hi, seq_len // BLOCK_N * BLOCK_N), full_lo)
    acc, m_i, l_i = attend_bands(q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, q_pos, q_lo, kv_lo, hi,
                                 lo, full_lo, full_hi, d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch,
                                 PAGE, BLOCK_N, PRECISION, WINDOWED)
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    if DIRECT:
        tl.store(out_ptr + q_start.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])
    else:
        part_row = (seq * tl.num_programs(1) * group + heads) * n_splits + split
        lse = tl.where(empty, -float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
        tl.store(part_o_ptr + part_row[:, None].to(tl.int64) * BLOCK_D + d[None, :], out, mask=g_ok[:, None])
        tl.store(part_lse_ptr + part_row, lse, mask=g_ok)


@jit_sized("n_splits")
def _decode_reduce_kernel(
    part_o_ptr, part_lse_ptr, out_ptr, qsl_ptr, sinks_ptr, head_dim, n_splits, stride_ot, stride_oh,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    """Weights each split by its share of the softmax mass; a sink takes its share and contributes 0."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(qsl_ptr + seq)
    if tl.load(qsl_ptr + seq + 1) == q_start:
        return
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    row = (seq * tl.num_programs(1) + head) * n_splits + s
    lse = tl.load(part_lse_ptr + row, mask=s < n_splits, other=-float("inf"))
    m = tl.max(lse, axis=0)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
        m = tl.maximum(m, sink)
        w = tl.exp2(lse - m)
        w = w / (tl.sum(w, axis=0) + tl.exp2(sink - m))
    else:
        w = tl.exp2(lse - m)
        w = w / tl.sum(w, axis=0)
    o = tl.load(part_o_ptr + row[:, None].to(tl.int64) * BLOCK_D + d[None, :], mask=s[:, None] < n_splits, other=0.0)
    res = tl.sum(o * w[:, None], axis=0)
    tl.store(out_ptr + q_start.to(tl.int64) * stride_ot + head * stride_oh + d, res.to(out_ptr.dtype.element_ty),
             mask=d < head_dim)


def choose_splits(n_seqs: int, n_kv_heads: int, max_keys: int, sms: int, block_n: int) -> int:
    """About two programs per SM (what fits at once), each split at least one KV tile long.

    Measured on the H100 and the H200 (perf/bench_kernels.py decode_variants): at 64 x 2k-4k one
    split (256 programs) beat 2-32 by 4-15%; at 4 x 32k, 16 splits (256 programs) were fastest;
    a single sequence wants one 128-key tile per split (H200, 1 x 1k: 8 splits 11.2 us against
    17.2 us with splits of four tiles; 1 x 4k: 32 splits 14.5 us against 19.0).
    """
    want = 2 * sms // max(n_seqs * n_kv_heads, 1)
    return max(1, min(want, triton.cdiv(max_keys, block_n), 64))


def decode_config(dtype: torch.dtype, on_gpu: bool) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages): 128-key tiles double-buffered for 16-bit KV on the GPU
    (best of the H100 sweep at 64 x 2k-4k and 4 x 32k, by 1-2%); fp32 tiles sized to shared memory."""
    if not on_gpu:
        return 32, 4, 1
    if dtype == torch.float32:
        return 32, 4, 2
    return 128, 4, 2


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor, sinks: torch.Tensor | None = None, window: int = 0, n_splits: int | None = None,
    config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Fills out [T, Hq, D] for batches whose sequences each have at most one new token;
    n_splits and config (BLOCK_N, num_warps, num_stages) override the heuristics."""
    n_seqs = meta.num_seqs
    _, page, n_kv_heads, head_dim = k_cache.shape
    n_q_heads = q.shape[1]
    group = n_q_heads // n_kv_heads
    block_d = next_pow2(head_dim)
    block_n, num_warps, num_stages = config or decode_config(q.dtype, q.is_cuda)
    max_keys = min(meta.max_seq_len, window + block_n) if window > 0 else meta.max_seq_len
    splits = n_splits or choose_splits(n_seqs, n_kv_heads, max_keys, device_sms(q), block_n)
    direct = splits == 1
    rows = 0 if direct else n_seqs * n_q_heads * splits
    part_o = torch.empty((rows, block_d), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((rows,), dtype=torch.float32, device=q.device)
    sinks_arg = q if sinks is None else sinks
    _decode_split_kernel[(n_seqs, n_kv_heads, splits)](
        q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, part_o, part_lse, out, sinks_arg,
        scale, head_dim, group, splits, window,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        PAGE=page, BLOCK_G=max(16, next_pow2(group)), BLOCK_N=block_n, BLOCK_D=block_d,
        PRECISION=dot_precision(q.dtype), HAS_SINKS=sinks is not None, DIRECT=direct, WINDOWED=window > 0,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not direct:
        _decode_reduce_kernel[(n_seqs, n_q_heads)](
            part_o, part_lse, out, meta.query_start_loc, sinks_arg, head_dim, splits, out.stride(0), out.stride(1),
            BLOCK_S=next_pow2(splits), BLOCK_D=block_d, HAS_SINKS=sinks is not None,
        )
    return out

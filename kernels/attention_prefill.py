"""Paged causal attention for varlen batches (prefill chunks over cached prefixes, decodes mixed in).

Grid (kv_head, seq, row tile), row tiles in reverse: the hardware starts programs in grid
order, so the longest causal rows (last tiles) of every head start first and the short
ones fill the tail. A tile's BLOCK_M rows are (token, head) pairs of one KV head's
query-head group, token-major, so each KV tile read serves all its query heads and a
decode sequence fills `group` rows instead of one. Keys visible to every row of the tile
run unmasked; only the bands at the causal diagonal and at the sliding window's lower
edge pay for the mask, and tiles wholly below the window are never read.
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


@triton.jit
def kv_bands(first_pos, last_pos, window, BLOCK_N: tl.constexpr):
    """KV bounds for query positions [first_pos, last_pos]: (kv_lo, lo, full_lo, full_hi).

    kv_lo is the lowest key any row sees. Tiles in [full_lo, full_hi) are visible to every
    row (no mask); [lo, full_lo) is the window's lower edge and [full_hi, last_pos] the
    causal diagonal, both masked. Tiles below lo lie wholly outside the window and are
    skipped. Only called with a window (window > 0).
    """
    kv_lo = tl.maximum(first_pos - window + 1, 0)
    full_hi = (first_pos + 1) // BLOCK_N * BLOCK_N
    full_lo = tl.cdiv(tl.maximum(last_pos - window + 1, 0), BLOCK_N) * BLOCK_N
    return kv_lo, kv_lo // BLOCK_N * BLOCK_N, tl.minimum(full_lo, full_hi), full_hi


@jit_sized("stride_bt")
def _prefill_kernel(
    q_ptr, kc_ptr, vc_ptr, out_ptr, bt_ptr, seq_lens_ptr, qsl_ptr, sinks_ptr,
    scale, head_dim, group, window,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
    PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, HAS_SINKS: tl.constexpr, WINDOWED: tl.constexpr,
):
    """WINDOWED (window > 0) is a compile-time switch: full-attention layers carry no window-edge loop."""
    kvh = tl.program_id(0)
    seq = tl.program_id(1)
    tile = tl.num_programs(2) - 1 - tl.program_id(2)
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
    kv_hi = last_pos + 1
    if WINDOWED:
        q_lo = q_pos - window + 1
        kv_lo, lo, full_lo, full_hi = kv_bands(first_pos, last_pos, window, BLOCK_N)
    else:
        q_lo = tl.zeros_like(q_pos)
        kv_lo = 0
        lo = 0
        full_lo = 0
        full_hi = (first_pos + 1) // BLOCK_N * BLOCK_N
    acc, m_i, l_i = attend_bands(q, acc, m_i, l_i, kc_ptr, vc_ptr, bt_row, kvh, q_pos, q_lo, kv_lo, kv_hi,
                                 lo, full_lo, full_hi, d, d_ok, qk_scale, stride_cb, stride_cs, stride_ch,
                                 PAGE, BLOCK_N, PRECISION, WINDOWED)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(out_ptr + (q_start + tok).to(tl.int64)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_mask)


def prefill_config(head_dim: int, dtype: torch.dtype, on_gpu: bool, fills_256: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): big tiles for 16-bit inputs on the GPU,
    shared-memory-sized ones for fp32, small ones for the interpreter (fewer, cheaper steps).

    On an H200 (perf/results/kernels-NVIDIA_H200-prefill_variants.md, 8k / 16k prompts)
    256 x 64 tiles over 8 warps, double-buffered, ran at 424 / 439 TFLOP/s against 403 / 418
    for 128 x 128 and 371 / 371 with 3 stages; the H100 runs the same default at 428 / 438.
    At 1k prompts 256-row tiles leave SMs idle (153 vs 202 TFLOP/s), so they are taken only
    where their grid fills two waves of the SMs (fills_256).
    """
    if not on_gpu:
        return 32, 32, 4, 1
    if dtype == torch.float32:
        return 64, 32, 4, 3
    if head_dim > 128:
        return 128, 32, 8, 2
    if fills_256:
        return 256, 64, 8, 2
    return 128, 128, 8, 2


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor, sinks: torch.Tensor | None = None, window: int = 0,
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Fills out [T, Hq, D] for any mix of prefill chunks and decodes; config overrides prefill_config."""
    _, page, n_kv_heads, head_dim = k_cache.shape
    group = q.shape[1] // n_kv_heads
    fills_256 = n_kv_heads * meta.num_seqs * triton.cdiv(meta.max_query_len * group, 256) >= 2 * device_sms(q)
    block_m, block_n, num_warps, num_stages = config or prefill_config(head_dim, q.dtype, q.is_cuda, fills_256)
    grid = (n_kv_heads, meta.num_seqs, triton.cdiv(meta.max_query_len * group, block_m))
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, meta.block_tables, meta.seq_lens, meta.query_start_loc,
        q if sinks is None else sinks,
        scale, head_dim, group, window,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        PAGE=page, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=next_pow2(head_dim), PRECISION=dot_precision(q.dtype),
        HAS_SINKS=sinks is not None, WINDOWED=window > 0, num_warps=num_warps, num_stages=num_stages,
    )
    return out

"""The MoE grouped GEMM at prefill sizes, fed by Hopper's TMA copy engine (dense weights only).

Tiles are those of kernels.moe_gemm (BLOCK_M rows of one expert's padded run by BLOCK_N
columns), but the activation between the two projections lies in expert-sorted order: the up
projection gathers token rows through `sorted_ids` and writes its output by a TMA store at
sorted position (C_SORTED; padding rows included, finite since their A rows are zeros), and the
down projection reads it back as contiguous tiles through a TMA descriptor (A_SORTED), then
scatters its weighted rows to token*top_k order. Weights come through a descriptor over
[E*N, K] (row expert*N + n; rows past an expert's N in a partial last tile belong to the next
expert and only feed columns that are never stored). PERSISTENT: a fixed grid loops over the
tiles that routing produced (read on the device) instead of one program per tile of the
host-side bound. Measured on the H200 (perf/results/moe-tma-h200): 1.08-1.12x the pointer form
at 2048-8192 tokens. The tables choose it per row ("TMA"), so decode sizes keep the pointer
kernel untouched (the early figures that had this form losing there came from a timing-order
artifact, never re-measured for this form).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .common import jit_sized
from .moe_gemm import epilogue, tile_coords


@triton.jit
def _a_tile(a, a_rows, row_ok, m0, k0, k_dim, stride_ak,
            A_SORTED: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """A tile [BLOCK_M, BLOCK_K]: sorted rows m0.. through the descriptor a, or gathered token rows by pointer."""
    if A_SORTED:
        tile = a.load([m0, k0])
    else:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] if EVEN_K else row_ok[:, None] & (offs_k < k_dim)[None, :]
        tile = tl.load(a_rows + offs_k[None, :] * stride_ak, mask=mask, other=0.0)
    return tile


@triton.jit
def _tile(
    pid_m, pid_n, a, b, c, w_ptr, sorted_ptr, expert_ptr, bias_ptr,
    n_out, k_dim, n_valid, alpha, limit, stride_am, stride_ak, stride_cm, stride_bias_e,
    A_DIV: tl.constexpr, A_SORTED: tl.constexpr, C_SORTED: tl.constexpr, GATED: tl.constexpr,
    WEIGHTED: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr,
    CLAMPED: tl.constexpr, DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One BLOCK_M x BLOCK_N output tile of M-block pid_m (one expert's rows), columns pid_n."""
    m0 = pid_m * BLOCK_M
    expert = tl.load(expert_ptr + pid_m).to(tl.int64)
    rows = tl.load(sorted_ptr + m0 + tl.arange(0, BLOCK_M))
    row_ok = rows < n_valid
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < n_out
    a_rows = a  # unused when A comes through its descriptor
    if not A_SORTED:
        a_rows = a + (rows // A_DIV).to(tl.int64)[:, None] * stride_am
    b_row = (expert * (2 if GATED else 1) * n_out + n0).to(tl.int32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        a_tile = _a_tile(a, a_rows, row_ok, m0, k0, k_dim, stride_ak, A_SORTED, EVEN_K, BLOCK_K)
        acc = tl.dot(a_tile, b.load([b_row, k0]).T, acc, input_precision=PRECISION)
        if GATED:
            acc_up = tl.dot(a_tile, b.load([b_row + n_out, k0]).T, acc_up, input_precision=PRECISION)
    acc = epilogue(acc, acc_up, rows, row_ok, offs_n, n_ok, bias_ptr + expert * stride_bias_e, w_ptr, n_out, alpha,
                   limit, GATED, HAS_BIAS, CLAMPED, WEIGHTED)
    if C_SORTED:
        c.store([m0, n0], acc.to(DTYPE))
    else:
        c_ptrs = c + rows.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(DTYPE), mask=row_ok[:, None] & n_ok[None, :])


@jit_sized("n_valid", "max_rows")
def moe_gemm_tma_kernel(
    a, b, c, w_ptr, sorted_ptr, expert_ptr, total_ptr, bias_ptr,
    n_out, k_dim, n_valid, max_rows, alpha, limit, stride_am, stride_ak, stride_cm, stride_bias_e,
    A_DIV: tl.constexpr, A_SORTED: tl.constexpr, C_SORTED: tl.constexpr, GATED: tl.constexpr,
    WEIGHTED: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr,
    CLAMPED: tl.constexpr, DTYPE: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    grid_n = tl.cdiv(n_out, BLOCK_N)
    total = tl.load(total_ptr)
    if PERSISTENT:
        grid_m = tl.cdiv(total, BLOCK_M)
        for tile in tl.range(tl.program_id(0), grid_m * grid_n, tl.num_programs(0)):
            pid_m, pid_n = tile_coords(tile, grid_m, grid_n, GROUP_M)
            _tile(pid_m, pid_n, a, b, c, w_ptr, sorted_ptr, expert_ptr, bias_ptr, n_out, k_dim, n_valid, alpha, limit,
                  stride_am, stride_ak, stride_cm, stride_bias_e, A_DIV, A_SORTED, C_SORTED, GATED, WEIGHTED, EVEN_K,
                  PRECISION, HAS_BIAS, CLAMPED, DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(max_rows, BLOCK_M), grid_n, GROUP_M)
        if pid_m * BLOCK_M < total:
            _tile(pid_m, pid_n, a, b, c, w_ptr, sorted_ptr, expert_ptr, bias_ptr, n_out, k_dim, n_valid, alpha, limit,
                  stride_am, stride_ak, stride_cm, stride_bias_e, A_DIV, A_SORTED, C_SORTED, GATED, WEIGHTED, EVEN_K,
                  PRECISION, HAS_BIAS, CLAMPED, DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)

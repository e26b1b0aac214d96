"""Grouped GEMM over expert-sorted rows: the one kernel behind both MoE projections.

Each tile is BLOCK_M rows of one expert's padded run (moe_align) by BLOCK_N output columns.
The up projection gathers its A rows from the tokens through `sorted_ids` (flat token*top_k +
slot indices; the pad value M masks a row off). Two layouts of what lies between the GEMMs:
- by pointer (decode sizes): the up projection writes `act` in token*top_k order, the down
  projection gathers it back through `sorted_ids`, the weights are read by pointer;
- sorted (the tables' "TMA" rows, prefill sizes): the up projection writes `act` in sorted
  order through a TMA store (C_SORTED: row p belongs to sorted position p, padding included),
  the down projection reads it as contiguous tiles through a TMA descriptor (A_SORTED), and
  dense weights come through a TMA descriptor over [E*N, K] (B_TMA; row expert*N + n; rows past
  an expert's N in a partial last tile belong to the next expert and only feed output columns
  that are never stored). On the H200 this won 5-11% at 2048-8192 tokens and lost 2-9% below.
Either way the down projection scatters its weighted rows to token*top_k order, and no permuted
copy of the input activations is ever written.
GATED: B holds [gate; up] rows and the tile computes act(A@gate^T + b_gate, A@up^T + b_up),
act = silu(gate) * up, or GPT-OSS's clamped SwiGLU (CLAMPED).
HAS_BIAS: one bias row per expert is added before the activation / the routing weight.
WEIGHTED: the fp32 routing weight of each row scales the output (down projection).
MXFP4: B is packed e2m1 bytes [E, N, K/2] with e8m0 exponents [E, N, K/32] (kernels.mxfp4),
loaded by pointer and decoded to A's dtype in registers a whole K tile at a time.
PERSISTENT: a fixed grid of programs loops over the tiles that routing produced (read on the
device), instead of one program per tile of the host-side upper bound.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .activation import clamped_swiglu_mul, silu_mul
from .common import jit_sized
from .mxfp4 import mxfp4_tile


@triton.jit
def _load_a(a, a_rows, row_ok, m0, k0, k_dim, stride_ak,
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
def _load_b(b, b_cols, col_off, n_ok, b_row, k0, k_dim, stride_bk,
            B_TMA: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """B tile [BLOCK_K, BLOCK_N]: weight rows b_row.. through the descriptor b (transposed), or by
    pointer from b_cols + col_off (col_off: where the up half starts)."""
    if B_TMA:
        tile = b.load([b_row, k0]).T
    else:
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = n_ok[None, :] if EVEN_K else (offs_k < k_dim)[:, None] & n_ok[None, :]
        tile = tl.load(b_cols + col_off + offs_k[:, None] * stride_bk, mask=mask, other=0.0)
    return tile


@triton.jit
def _dense_k_loop(a, a_rows, b, b_cols, row_ok, n_ok, m0, b_row, up_row, up_off, k_dim, stride_ak, stride_bk,
                  A_SORTED: tl.constexpr, B_TMA: tl.constexpr, GATED: tl.constexpr, EVEN_K: tl.constexpr,
                  PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        a_tile = _load_a(a, a_rows, row_ok, m0, k0, k_dim, stride_ak, A_SORTED, EVEN_K, BLOCK_K)
        b_tile = _load_b(b, b_cols, 0, n_ok, b_row, k0, k_dim, stride_bk, B_TMA, EVEN_K, BLOCK_K)
        acc = tl.dot(a_tile, b_tile, acc, input_precision=PRECISION)
        if GATED:
            b_up = _load_b(b, b_cols, up_off, n_ok, up_row, k0, k_dim, stride_bk, B_TMA, EVEN_K, BLOCK_K)
            acc_up = tl.dot(a_tile, b_up, acc_up, input_precision=PRECISION)
    return acc, acc_up


@triton.jit
def _mxfp4_k_loop(a, a_rows, b_cols, s_cols, row_ok, n_ok, m0, k_dim, stride_ak, up_off, up_scale_off,
                  A_SORTED: tl.constexpr, GATED: tl.constexpr, PRECISION: tl.constexpr, DTYPE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_bytes = tl.arange(0, BLOCK_K // 2)
    offs_groups = tl.arange(0, BLOCK_K // 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        # k_dim is a multiple of 32, so a scale group is all in or all out.
        a_tile = _load_a(a, a_rows, row_ok, m0, k0, k_dim, stride_ak, A_SORTED, False, BLOCK_K)
        b_ptrs = b_cols + (k0 // 2 + offs_bytes)[:, None]
        b_ok = (k0 + 2 * offs_bytes < k_dim)[:, None] & n_ok[None, :]
        s_ptrs = s_cols[None, :] + (k0 // 32 + offs_groups)[:, None]
        s_ok = (k0 + 32 * offs_groups < k_dim)[:, None] & n_ok[None, :]
        b_tile = mxfp4_tile(tl.load(b_ptrs, mask=b_ok, other=0), tl.load(s_ptrs, mask=s_ok, other=0), DTYPE,
                            BLOCK_K, BLOCK_N)
        acc = tl.dot(a_tile, b_tile, acc, input_precision=PRECISION)
        if GATED:
            b_up = mxfp4_tile(tl.load(b_ptrs + up_off, mask=b_ok, other=0),
                              tl.load(s_ptrs + up_scale_off, mask=s_ok, other=0), DTYPE, BLOCK_K, BLOCK_N)
            acc_up = tl.dot(a_tile, b_up, acc_up, input_precision=PRECISION)
    return acc, acc_up


@triton.jit
def _tile_coords(tile, grid_m, grid_n, GROUP_M: tl.constexpr):
    """Grouped ordering: consecutive tiles share B (expert weight) tiles in L2."""
    per_group = GROUP_M * grid_n
    first_m = (tile // per_group) * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % size_m, (tile % per_group) // size_m


@triton.jit
def _gemm_tile(
    pid_m, pid_n, a, b, c, w_ptr, sorted_ptr, expert_ptr, bias_ptr, scale_ptr,
    n_out, k_dim, n_valid, alpha, limit, stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm,
    stride_bias_e, stride_se, stride_sn,
    A_DIV: tl.constexpr, A_SORTED: tl.constexpr, B_TMA: tl.constexpr, C_SORTED: tl.constexpr, GATED: tl.constexpr,
    WEIGHTED: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr,
    CLAMPED: tl.constexpr, MXFP4: tl.constexpr, DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
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
    if MXFP4:
        b_cols = b + expert * stride_be + offs_n.to(tl.int64) * stride_bn
        s_cols = scale_ptr + expert * stride_se + offs_n.to(tl.int64) * stride_sn
        acc, acc_up = _mxfp4_k_loop(a, a_rows, b_cols, s_cols, row_ok, n_ok, m0, k_dim, stride_ak,
                                    n_out * stride_bn, n_out * stride_sn, A_SORTED, GATED, PRECISION, DTYPE,
                                    BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        b_row = (expert * (2 if GATED else 1) * n_out + n0).to(tl.int32)
        b_cols = b  # unused when B comes through its descriptor
        if not B_TMA:
            b_cols = b + expert * stride_be + offs_n[None, :].to(tl.int64) * stride_bn
        acc, acc_up = _dense_k_loop(a, a_rows, b, b_cols, row_ok, n_ok, m0, b_row, b_row + n_out, n_out * stride_bn,
                                    k_dim, stride_ak, stride_bk, A_SORTED, B_TMA, GATED, EVEN_K, PRECISION,
                                    BLOCK_M, BLOCK_N, BLOCK_K)
    if HAS_BIAS:
        bias_row = bias_ptr + expert * stride_bias_e
        acc += tl.load(bias_row + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_up += tl.load(bias_row + n_out + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if GATED:
        if CLAMPED:
            acc = clamped_swiglu_mul(acc, acc_up, alpha, limit)
        else:
            acc = silu_mul(acc, acc_up)
    if WEIGHTED:
        acc = acc * tl.load(w_ptr + rows, mask=row_ok, other=0.0)[:, None]
    if C_SORTED:  # padded rows are written too (finite: A rows of zeros); the down GEMM never stores them
        c.store([m0, n0], acc.to(DTYPE))
    else:
        c_ptrs = c + rows.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(DTYPE), mask=row_ok[:, None] & n_ok[None, :])


@jit_sized("n_valid", "max_rows")
def moe_gemm_kernel(
    a, b, c, w_ptr, sorted_ptr, expert_ptr, total_ptr, bias_ptr, scale_ptr,
    n_out, k_dim, n_valid, max_rows, alpha, limit,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_bias_e, stride_se, stride_sn,
    A_DIV: tl.constexpr, A_SORTED: tl.constexpr, B_TMA: tl.constexpr, C_SORTED: tl.constexpr, GATED: tl.constexpr,
    WEIGHTED: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr,
    CLAMPED: tl.constexpr, MXFP4: tl.constexpr, DTYPE: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    grid_n = tl.cdiv(n_out, BLOCK_N)
    total = tl.load(total_ptr)
    if PERSISTENT:
        grid_m = tl.cdiv(total, BLOCK_M)
        for tile in tl.range(tl.program_id(0), grid_m * grid_n, tl.num_programs(0)):
            pid_m, pid_n = _tile_coords(tile, grid_m, grid_n, GROUP_M)
            _gemm_tile(pid_m, pid_n, a, b, c, w_ptr, sorted_ptr, expert_ptr, bias_ptr, scale_ptr,
                       n_out, k_dim, n_valid, alpha, limit, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                       stride_cm, stride_bias_e, stride_se, stride_sn, A_DIV, A_SORTED, B_TMA, C_SORTED, GATED, WEIGHTED,
                       EVEN_K, PRECISION, HAS_BIAS, CLAMPED, MXFP4, DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(max_rows, BLOCK_M), grid_n, GROUP_M)
        if pid_m * BLOCK_M < total:
            _gemm_tile(pid_m, pid_n, a, b, c, w_ptr, sorted_ptr, expert_ptr, bias_ptr, scale_ptr,
                       n_out, k_dim, n_valid, alpha, limit, stride_am, stride_ak, stride_be, stride_bn, stride_bk,
                       stride_cm, stride_bias_e, stride_se, stride_sn, A_DIV, A_SORTED, B_TMA, C_SORTED, GATED, WEIGHTED,
                       EVEN_K, PRECISION, HAS_BIAS, CLAMPED, MXFP4, DTYPE, BLOCK_M, BLOCK_N, BLOCK_K)

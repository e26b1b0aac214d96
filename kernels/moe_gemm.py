"""Grouped GEMM over expert-sorted rows: the one kernel behind both MoE projections.

Each program owns a BLOCK_M x BLOCK_N tile of one expert's padded row run. Rows are
gathered through `sorted_ids` (flat token*top_k + slot indices; the pad value M masks
a row off), so no permuted copy of the activations is ever written.
GATED: B holds [gate; up] rows and the tile computes act(A@gate^T + b_gate, A@up^T + b_up),
act = silu(gate) * up, or GPT-OSS's clamped SwiGLU (CLAMPED).
HAS_BIAS: one bias row per expert is added before the activation / the routing weight.
WEIGHTED: the fp32 routing weight of each row scales the output (down projection).
MXFP4: B is packed e2m1 bytes [E, N, K/2] with e8m0 exponents [E, N, K/32] (kernels.mxfp4),
decoded to A's dtype in registers a whole K tile at a time (kernels.mxfp4.mxfp4_tile).
FP8: B is float8_e4m3fn [E, N, K] with fp32 scales per 128x128 block [E, N/128, K/128]
(SCALE_BLOCK = 128) or per channel [E, N] (SCALE_BLOCK = 0); see kernels.fp8. A8 (W8A8): A is
FP8 too, with per-row 128-group scales [rows, K/128]; a gated tile that writes an FP8 C (the up
projection feeding a W8A8 down projection) quantizes its SwiGLU output the same way in the
epilogue, so the activation crosses memory once, in 8 bits, already in the down GEMM's form.
This is the form for decode sizes; prefill sizes take kernels.moe_gemm_tma where a table says so.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .activation import clamped_swiglu_mul, silu_mul
from .common import jit_sized
from .fp8 import fp8_k_loop, quantize_groups
from .mxfp4 import mxfp4_tile


@triton.jit
def _dense_k_loop(a_rows, b_cols, row_ok, n_ok, k_dim, stride_ak, stride_bk, up_off,
                  GATED: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_rows + offs_k[None, :] * stride_ak
    b_ptrs = b_cols + offs_k[:, None] * stride_bk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = offs_k + k0 < k_dim
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if GATED:
            if EVEN_K:
                b_up = tl.load(b_ptrs + up_off, mask=n_ok[None, :], other=0.0)
            else:
                b_up = tl.load(b_ptrs + up_off, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    return acc, acc_up


@triton.jit
def _mxfp4_k_loop(a_rows, b_cols, s_cols, row_ok, n_ok, k_dim, stride_ak, up_off, up_scale_off,
                  GATED: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    dtype = a_rows.dtype.element_ty
    offs_k = tl.arange(0, BLOCK_K)
    offs_bytes = tl.arange(0, BLOCK_K // 2)
    offs_groups = tl.arange(0, BLOCK_K // 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        # k_dim is a multiple of 32, so a scale group is all in or all out.
        a = tl.load(a_rows + (k0 + offs_k)[None, :] * stride_ak, mask=row_ok[:, None] & (k0 + offs_k < k_dim)[None, :],
                    other=0.0)
        b_ptrs = b_cols + (k0 // 2 + offs_bytes)[:, None]
        b_ok = (k0 + 2 * offs_bytes < k_dim)[:, None] & n_ok[None, :]
        s_ptrs = s_cols[None, :] + (k0 // 32 + offs_groups)[:, None]
        s_ok = (k0 + 32 * offs_groups < k_dim)[:, None] & n_ok[None, :]
        b = mxfp4_tile(tl.load(b_ptrs, mask=b_ok, other=0), tl.load(s_ptrs, mask=s_ok, other=0), dtype,
                       BLOCK_K, BLOCK_N)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if GATED:
            b_up = mxfp4_tile(tl.load(b_ptrs + up_off, mask=b_ok, other=0),
                              tl.load(s_ptrs + up_scale_off, mask=s_ok, other=0), dtype, BLOCK_K, BLOCK_N)
            acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
    return acc, acc_up


@triton.jit
def _fp8_k_loop(a_rows, as_rows, b_cols, s_expert, offs_n, row_ok, n_ok, n_out, k_dim, stride_ak, stride_bk, up_off,
                stride_sn, A8: tl.constexpr, SCALE_BLOCK: tl.constexpr, GATED: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """kernels.fp8.fp8_k_loop over one expert's columns; per-channel scales applied to its result."""
    if SCALE_BLOCK:  # [N/128, K/128] per expert, rows of 128 channels; the up half starts n_out/128 rows on
        s_cols, up_scale_off = s_expert + (offs_n // SCALE_BLOCK).to(tl.int64) * stride_sn, n_out // SCALE_BLOCK * stride_sn
    else:  # [N] per expert
        s_cols, up_scale_off = s_expert + offs_n.to(tl.int64) * stride_sn, n_out * stride_sn
    acc, acc_up = fp8_k_loop(a_rows, as_rows, b_cols, s_cols, row_ok, n_ok, k_dim, stride_ak, stride_bk, 1, 1,
                             up_off, up_scale_off, A8, SCALE_BLOCK, GATED, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if not SCALE_BLOCK:
        acc = acc * tl.load(s_cols, mask=n_ok, other=0.0)[None, :]
        if GATED:
            acc_up = acc_up * tl.load(s_cols + up_scale_off, mask=n_ok, other=0.0)[None, :]
    return acc, acc_up


@triton.jit
def tile_coords(pid, grid_m, grid_n, GROUP_M: tl.constexpr):
    """(M-block, N-block) of program pid in grouped order: consecutive programs share B (expert
    weight) tiles in L2."""
    per_group = GROUP_M * grid_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m


@triton.jit
def epilogue(acc, acc_up, rows, row_ok, offs_n, n_ok, bias_row, w_ptr, n_out, alpha, limit,
             GATED: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMPED: tl.constexpr, WEIGHTED: tl.constexpr):
    """A tile's fp32 output: the expert's bias row, the (clamped) SwiGLU of gate and up, the routing weight."""
    if HAS_BIAS:
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
    return acc


@jit_sized("n_valid", "max_rows")
def moe_gemm_kernel(
    a_ptr, b_ptr, c_ptr, w_ptr, sorted_ptr, expert_ptr, total_ptr, bias_ptr, scale_ptr, a_scale_ptr, c_scale_ptr,
    n_out, k_dim, n_valid, max_rows, alpha, limit,
    stride_am, stride_ak, stride_be, stride_bn, stride_bk, stride_cm, stride_cn,
    stride_bias_e, stride_se, stride_sn, stride_asm, stride_csm,
    A_DIV: tl.constexpr, GATED: tl.constexpr, WEIGHTED: tl.constexpr, EVEN_K: tl.constexpr,
    PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMPED: tl.constexpr, MXFP4: tl.constexpr,
    FP8: tl.constexpr, A8: tl.constexpr, SCALE_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(max_rows, BLOCK_M), tl.cdiv(n_out, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return
    expert = tl.load(expert_ptr + pid_m).to(tl.int64)
    rows = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = rows < n_valid
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < n_out
    a_rows = a_ptr + (rows // A_DIV).to(tl.int64)[:, None] * stride_am
    b_cols = b_ptr + expert * stride_be + offs_n[None, :].to(tl.int64) * stride_bn
    if MXFP4:
        s_cols = scale_ptr + expert * stride_se + offs_n.to(tl.int64) * stride_sn
        acc, acc_up = _mxfp4_k_loop(a_rows, b_cols, s_cols, row_ok, n_ok, k_dim, stride_ak, n_out * stride_bn,
                                    n_out * stride_sn, GATED, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    elif FP8:
        acc, acc_up = _fp8_k_loop(a_rows, a_scale_ptr + (rows // A_DIV).to(tl.int64) * stride_asm, b_cols,
                                  scale_ptr + expert * stride_se, offs_n, row_ok, n_ok, n_out, k_dim, stride_ak,
                                  stride_bk, n_out * stride_bn, stride_sn, A8, SCALE_BLOCK, GATED, PRECISION,
                                  BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        acc, acc_up = _dense_k_loop(a_rows, b_cols, row_ok, n_ok, k_dim, stride_ak, stride_bk, n_out * stride_bn,
                                    GATED, EVEN_K, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    acc = epilogue(acc, acc_up, rows, row_ok, offs_n, n_ok, bias_ptr + expert * stride_bias_e, w_ptr, n_out, alpha,
                   limit, GATED, HAS_BIAS, CLAMPED, WEIGHTED)
    c_ptrs = c_ptr + rows.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    if c_ptr.dtype.element_ty == tl.float8e4nv:  # W8A8 up projection: C in the down GEMM's A form
        acc, c_scales = quantize_groups(acc, BLOCK_M, BLOCK_N, 128)  # kernels.fp8.GROUP
        offs_g = pid_n * (BLOCK_N // 128) + tl.arange(0, BLOCK_N // 128)
        tl.store(c_scale_ptr + rows.to(tl.int64)[:, None] * stride_csm + offs_g[None, :], c_scales,
                 mask=row_ok[:, None] & (offs_g * 128 < n_out)[None, :])
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])

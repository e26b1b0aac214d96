"""FP8 (float8_e4m3fn) GEMM building blocks shared by the fused MoE and the dense projections.

Weights come with float32 scales, either one per 128 x 128 block (Qwen3-FP8 / DeepSeek
`weight_scale_inv`; SCALE_BLOCK = 128) or one per output channel (compressed-tensors;
SCALE_BLOCK = 0), as laminar.ops.torch_ops.dequantize_fp8 reads them.
Two ways to multiply them (chosen per size by the callers' tables):
- W8A8: activations quantized dynamically per token and 128-wide group of K (absmax / 448, as
  torch_ops.quantize_fp8 does with block (1, 128)), an FP8 x FP8 tensor-core dot per K tile, both
  scales applied to each tile's fp32 partial product (per-channel weight scales once, at the end).
  Hopper's FP8 tensor cores run twice the bf16 rate: this is the form for prefill sizes.
- W8A16: 16-bit activations as they are, each weight tile upcast in registers just before a
  16-bit dot, its block scale applied to the partial product. No quantization pass and no extra rounding of activations; at
  decode sizes the GEMM is bound by reading the weights, which are 8-bit either way.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import jit_sized

FP8_MAX = 448.0  # the largest finite float8_e4m3fn
GROUP = 128  # activation quantization group along K; also the weight scale block (K and N)


@triton.jit
def quantize_groups(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_N: tl.constexpr):
    """fp32 tile [BLOCK_M, BLOCK_N] -> (float8_e4m3fn tile, fp32 scales [BLOCK_M, BLOCK_N // GROUP_N]).

    One absmax scale per row and GROUP_N consecutive columns; x == q * scale up to FP8 rounding.
    """
    groups = tl.reshape(x, (BLOCK_M, BLOCK_N // GROUP_N, GROUP_N))
    scale = tl.maximum(tl.max(tl.abs(groups), axis=2) / 448.0, 1e-12)
    q = tl.reshape(groups / scale[:, :, None], (BLOCK_M, BLOCK_N))
    return q.to(tl.float8e4nv), scale


@triton.jit
def fp8_k_loop(a_rows, as_rows, b_cols, bs_cols, row_ok, n_ok, k_dim, stride_ak, stride_bk, stride_ask, stride_bsk,
               up_off, up_scale_off, A8: tl.constexpr, SCALE_BLOCK: tl.constexpr, GATED: tl.constexpr,
               PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 products of A rows [BLOCK_M, K] with FP8 weight columns [K, BLOCK_N] (and the up half's).

    a_rows / b_cols point at each row / column's first element; as_rows at each row's group scales
    (A8) and bs_cols at each column's scales (its block row when SCALE_BLOCK, else its channel
    scale, which the caller applies). A8 tiles divide 128, so a tile never straddles a scale group;
    W8A16 tiles may span several weight blocks (deeper loads at decode sizes): each block's rows
    are then scaled before the dot (_prescaled_tile).
    """
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        k_ok = offs_k + k0 < k_dim
        a = tl.load(a_rows + (k0 + offs_k)[None, :] * stride_ak, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b_ptrs = b_cols + (k0 + offs_k)[:, None] * stride_bk
        b_ok = k_ok[:, None] & n_ok[None, :]
        b = tl.load(b_ptrs, mask=b_ok, other=0.0)
        b_up = b
        if GATED:
            b_up = tl.load(b_ptrs + up_off, mask=b_ok, other=0.0)
        if SCALE_BLOCK and BLOCK_K > 128:
            acc = tl.dot(a, _prescaled_tile(b, bs_cols, n_ok, k0, k_dim, stride_bsk, a.dtype, BLOCK_K, BLOCK_N), acc,
                         input_precision=PRECISION)
            if GATED:
                acc_up = tl.dot(a, _prescaled_tile(b_up, bs_cols + up_scale_off, n_ok, k0, k_dim, stride_bsk, a.dtype,
                                                   BLOCK_K, BLOCK_N), acc_up, input_precision=PRECISION)
        else:
            group = k0 // 128
            a_scale = tl.full((BLOCK_M,), 1.0, tl.float32)
            if A8:
                a_scale = tl.load(as_rows + group * stride_ask, mask=row_ok, other=0.0)
            b_scale = tl.full((BLOCK_N,), 1.0, tl.float32)
            b_scale_up = b_scale
            if SCALE_BLOCK:
                b_scale = tl.load(bs_cols + group * stride_bsk, mask=n_ok, other=0.0)
                if GATED:
                    b_scale_up = tl.load(bs_cols + up_scale_off + group * stride_bsk, mask=n_ok, other=0.0)
            acc = _scaled_dot(a, b, a_scale, b_scale, acc, A8, SCALE_BLOCK, PRECISION)
            if GATED:
                acc_up = _scaled_dot(a, b_up, a_scale, b_scale_up, acc_up, A8, SCALE_BLOCK, PRECISION)
    return acc, acc_up


@triton.jit
def _prescaled_tile(b, bs_cols, n_ok, k0, k_dim, stride_bsk, dtype: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """A [BLOCK_K, BLOCK_N] FP8 tile spanning BLOCK_K / 128 weight blocks, each scaled by its block's scales,
    in dtype (rounded once, as a 16-bit checkpoint's weights are)."""
    groups = k0 // 128 + tl.arange(0, BLOCK_K // 128)
    s_ok = (groups * 128 < k_dim)[:, None] & n_ok[None, :]
    scales = tl.load(bs_cols[None, :] + groups[:, None] * stride_bsk, mask=s_ok, other=0.0)
    w = tl.reshape(b.to(tl.float32), (BLOCK_K // 128, 128, BLOCK_N)) * scales[:, None, :]
    return tl.reshape(w, (BLOCK_K, BLOCK_N)).to(dtype)


@triton.jit
def _scaled_dot(a, b, a_scale, b_scale, acc, A8: tl.constexpr, SCALE_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """acc + (a * a_scale) @ (b * b_scale): an FP8 dot (A8), or b upcast to a's dtype (exact: every e4m3
    value is a bf16 one) for a 16-bit dot; either way the scales multiply the fp32 partial product."""
    if A8:
        part = tl.dot(a, b)
        if SCALE_BLOCK:
            return acc + part * (a_scale[:, None] * b_scale[None, :])
        return acc + part * a_scale[:, None]
    if SCALE_BLOCK:
        return acc + tl.dot(a, b.to(a.dtype), input_precision=PRECISION) * b_scale[None, :]
    return tl.dot(a, b.to(a.dtype), acc, input_precision=PRECISION)


@jit_sized("n_rows")
def _quantize_rows_kernel(x_ptr, q_ptr, s_ptr, n_rows, k_dim, stride_xm, stride_qm, stride_sm,
                          GROUP_K: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * GROUP_K + tl.arange(0, GROUP_K)
    mask = (rows < n_rows)[:, None] & (cols < k_dim)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
    q, scale = quantize_groups(x.to(tl.float32), BLOCK_M, GROUP_K, GROUP_K)
    tl.store(q_ptr + rows.to(tl.int64)[:, None] * stride_qm + cols[None, :], q, mask=mask)
    tl.store(s_ptr + rows * stride_sm + tl.program_id(1), tl.reshape(scale, (BLOCK_M,)), mask=rows < n_rows)


def quantize_rows(x: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic activation quantization: x [T, K] -> (float8_e4m3fn [T, K], fp32 scales [T, ceil(K / group)]).

    group = 128 gives the per-token-group scales the W8A8 kernels read; group >= K one scale per
    token (torch._scaled_mm's rowwise form). Same numbers as torch_ops.quantize_fp8(x, (1, group)).
    """
    n_rows, k_dim = x.shape
    group_k = triton.next_power_of_2(min(group, k_dim))  # a whole row's group may overhang it (masked)
    assert group >= k_dim or group_k == group, "a group must be a power of two or the whole row"
    q = torch.empty((n_rows, k_dim), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty((n_rows, triton.cdiv(k_dim, group_k)), dtype=torch.float32, device=x.device)
    block_m = max(1, min(16, 8192 // group_k))
    if n_rows:
        _quantize_rows_kernel[(triton.cdiv(n_rows, block_m), scales.shape[1])](
            x, q, scales, n_rows, k_dim, x.stride(0), q.stride(0), scales.stride(0), GROUP_K=group_k, BLOCK_M=block_m)
    return q, scales


def scale_block(weight: torch.Tensor, scale: torch.Tensor) -> int:
    """128 for block scales [..., ceil(N/128), ceil(K/128)], 0 for per-channel scales [..., N] / [..., N, 1];
    any other block size is refused (the kernels index scales by 128-wide groups)."""
    n, k = weight.shape[-2:]
    if scale.ndim == weight.ndim and tuple(scale.shape[-2:]) != (n, 1):
        expected = (triton.cdiv(n, GROUP), triton.cdiv(k, GROUP))
        assert tuple(scale.shape[-2:]) == expected, f"FP8 block scales {tuple(scale.shape)}: kernels need 128x128 blocks"
        return GROUP
    assert scale.numel() == weight[..., 0].numel(), f"FP8 scales {tuple(scale.shape)} fit neither blocks nor channels"
    return 0

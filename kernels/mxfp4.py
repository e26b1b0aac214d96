"""MXFP4 (OCP microscaling, e2m1 values with one e8m0 exponent per 32) decoded in registers.

Hopper has no FP4 tensor cores: a GEMM reads the packed bytes (4.25 bits a weight with the
scales) and turns them into 16-bit operands in registers just before the dot. Layout as the
release stores it (laminar.ops.torch_ops.dequantize_mxfp4): byte j of a 32-value group holds
value 2j in its low nibble and value 2j + 1 in its high nibble.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _e2m1_doubled(code):
    """Twice the value of e2m1 codes (int32 in [0, 16)): sign bit 3, exponent bits 2-1, mantissa bit 0."""
    exp = (code >> 1) & 3
    man = code & 1
    mag = tl.where(exp == 0, man, (2 + man) << tl.maximum(exp - 1, 0))  # 0, 1, 2, 3, 4, 6, 8, 12
    return tl.where((code & 8) != 0, -mag, mag).to(tl.float32)


@triton.jit
def mxfp4_tile(packed, exponents, dtype: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """packed [BLOCK_K/2, N] bytes and exponents [BLOCK_K/32, N] -> [BLOCK_K, N] weights in dtype.

    Decoding the whole K tile at once lets the GEMM issue one dot of full depth per tile (rather
    than two 16-deep dots per scale group) and load each column's bytes as one contiguous run.
    """
    codes = packed.to(tl.int32)
    pairs = tl.join(_e2m1_doubled(codes & 15), _e2m1_doubled(codes >> 4))  # [K/2, N, 2]: values 2j, 2j + 1
    values = tl.reshape(tl.permute(pairs, (0, 2, 1)), (BLOCK_K // 32, 32, BLOCK_N))
    half_scale = (exponents.to(tl.int32) << 23).to(tl.float32, bitcast=True) * 0.5  # 2^(e - 127) / 2
    return tl.reshape(values * half_scale[:, None, :], (BLOCK_K, BLOCK_N)).to(dtype)

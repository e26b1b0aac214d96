"""MXFP4 expert GEMM for Hopper: packed weights in kernels.mxfp4_layout's form, upcast to bf16 in registers.

Hopper has no FP4 tensor cores, and at decode sizes a GEMM is bound by reading weights, so the
bytes are read as packed (4.25 bits a weight) and each one becomes two 16-bit operands with a few
integer instructions: in the layout each byte's low nibble belongs to the first 32 columns of a
64-wide K tile and its high nibble to the last 32, so the decode is elementwise (no shuffles) and
feeds two 32-deep dots. An e2m1 code s|e1 e0|m placed as sign bit 15 and bits 8..6 of a bf16 is
its value times 2^-126 (exactly, the subnormal 0.5 included); one multiply by 2^(scale - 64) turns
it into value * 2^(scale-127) * 2^-63, a normal bf16 for block scales 65..191 (real weights sit
near 2^-7..2^0), and the fp32 accumulator takes back the 2^63 once per tile.
SWAP puts the weights on the MMA's M side (rows of the tile are output features, tokens are N):
the decode-size form, where a tile has few tokens. Otherwise activations are M (prefill).
On the GPU the upcast is inline PTX on packed 32-bit lanes (two bf16 per instruction); the
interpreter (and ASM=False) runs the same bit arithmetic in plain Triton.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import dot_precision, jit_sized
from .moe_config import MXFP4_KERNEL_LAYOUT, _load_table, config_file_name, device_name
from .moe_gemm import epilogue, tile_coords

UNDO_SCALE: tl.constexpr = tl.constexpr(2.0**63)  # the decode leaves weights at 2^-63 of their value

# Two bytes per 32-bit lane -> two bf16 bits of their low (or high) nibbles, times the scale factor.
# prmt spreads bytes 0,1 (2,3) into the low byte of each 16-bit half; shifts place e/m at 8..6, sign at 15.
_ASM = """
{{
.reg .b32 t, a, b;
prmt.b32 t, $2, 0, 0x4140;
shl.b32 a, t, {em};
shl.b32 b, t, {sign};
and.b32 a, a, 0x01C001C0;
and.b32 b, b, 0x80008000;
or.b32 a, a, b;
mul.rn.bf16x2 $0, a, $3;
prmt.b32 t, $2, 0, 0x4342;
shl.b32 a, t, {em};
shl.b32 b, t, {sign};
and.b32 a, a, 0x01C001C0;
and.b32 b, b, 0x80008000;
or.b32 a, a, b;
mul.rn.bf16x2 $1, a, $4;
}}
"""
_ASM_LOW: tl.constexpr = tl.constexpr(_ASM.format(em=6, sign=12))
_ASM_HIGH: tl.constexpr = tl.constexpr(_ASM.format(em=2, sign=8))


@triton.jit
def _upcast(packed, factor, HIGH: tl.constexpr, ASM: tl.constexpr):
    """[R, 32] packed bytes and a bf16 factor per row ([R]) -> [R, 32] bf16 of the low or high nibbles."""
    factor = tl.broadcast_to(factor[:, None], packed.shape)
    if ASM:
        return tl.inline_asm_elementwise(_ASM_HIGH if HIGH else _ASM_LOW, "=r,=r,r,r,r", [packed, factor],
                                         dtype=tl.bfloat16, is_pure=True, pack=4)
    code = packed.to(tl.int32)
    if HIGH:
        code = code >> 4
    # The same placement in an fp32 (bits 24..22, sign 31): the interpreter neither multiplies bf16 nor
    # keeps bf16 subnormals; fp32 holds 0.5 * 2^-126 and the product is exact.
    value = (((code & 7) << 22) | ((code & 8) << 28)).to(tl.float32, bitcast=True)
    return (value * factor.to(tl.float32)).to(tl.bfloat16)


@triton.jit
def _scale_factor(s_ptrs, mask):
    """e8m0 exponents -> bf16 2^(s - 64) (exponent field s + 63; s above 191 saturates there)."""
    s = tl.minimum(tl.load(s_ptrs, mask=mask, other=0).to(tl.int32), 191)
    return ((s + 63) << 7).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _load_act(a_rows, k, row_ok, k_dim, stride_ak, SWAP: tl.constexpr):
    """32 columns of the tile's activation rows from column k: [32, M] when SWAP, else [M, 32]."""
    offs = k + tl.arange(0, 32)
    k_ok = offs < k_dim
    if SWAP:  # one return: Triton wants every return of a function to have one type
        act = tl.load(a_rows[None, :] + offs[:, None] * stride_ak, mask=row_ok[None, :] & k_ok[:, None], other=0.0)
    else:
        act = tl.load(a_rows[:, None] + offs[None, :] * stride_ak, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
    return act


@triton.jit
def _mma(acc, act, w, SWAP: tl.constexpr, PRECISION: tl.constexpr):
    if SWAP:
        acc = tl.dot(w, act, acc, input_precision=PRECISION)
    else:
        acc = tl.dot(act, tl.trans(w), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _half_tiles(acc, act_lo, act_hi, w_ptrs, s_ptrs, stride_sg, mask, ASM: tl.constexpr, SWAP: tl.constexpr,
                PRECISION: tl.constexpr):
    """One 64-wide K tile of one weight matrix: its low nibbles (group 2t) and high nibbles (group 2t + 1)."""
    dtype = act_lo.dtype
    packed = tl.load(w_ptrs, mask=mask[:, None], other=0)
    acc = _mma(acc, act_lo, _upcast(packed, _scale_factor(s_ptrs, mask), False, ASM).to(dtype), SWAP, PRECISION)
    return _mma(acc, act_hi, _upcast(packed, _scale_factor(s_ptrs + stride_sg, mask), True, ASM).to(dtype), SWAP,
                PRECISION)


@jit_sized("n_valid", "max_rows")
def moe_mxfp4_kernel(
    a_ptr, w_ptr, s_ptr, c_ptr, rw_ptr, sorted_ptr, expert_ptr, total_ptr, bias_ptr,
    n_out, k_dim, n_valid, max_rows, alpha, limit,
    stride_am, stride_ak, stride_we, stride_wn, stride_se, stride_sg, stride_cm, stride_bias_e,
    A_DIV: tl.constexpr, GATED: tl.constexpr, WEIGHTED: tl.constexpr, HAS_BIAS: tl.constexpr,
    CLAMPED: tl.constexpr, SWAP: tl.constexpr, ASM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """One BLOCK_M x BLOCK_N tile of one expert's rows (kernels.moe_gemm's grid, routing and epilogue)."""
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(max_rows, BLOCK_M), tl.cdiv(n_out, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(total_ptr):
        return
    expert = tl.load(expert_ptr + pid_m).to(tl.int64)
    rows = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = rows < n_valid
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < n_out
    a_rows = a_ptr + (rows // A_DIV).to(tl.int64) * stride_am
    w_rows = w_ptr + expert * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn + tl.arange(0, 32)[None, :]
    s_cols = s_ptr + expert * stride_se + offs_n
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros_like(acc)
    for k0 in range(0, k_dim, BLOCK_K):
        for sub in tl.static_range(BLOCK_K // 64):
            k = k0 + sub * 64
            live = n_ok & (offs_n * 0 + k < k_dim)  # a tensor compare: the interpreter's bool & scalar gives int
            act_lo = _load_act(a_rows, k, row_ok, k_dim, stride_ak, SWAP)
            act_hi = _load_act(a_rows, k + 32, row_ok, k_dim, stride_ak, SWAP)
            s_ptrs = s_cols + (k // 32) * stride_sg
            acc = _half_tiles(acc, act_lo, act_hi, w_rows + k // 2, s_ptrs, stride_sg, live, ASM, SWAP, PRECISION)
            if GATED:
                acc_up = _half_tiles(acc_up, act_lo, act_hi, w_rows + n_out * stride_wn + k // 2, s_ptrs + n_out,
                                     stride_sg, live, ASM, SWAP, PRECISION)
    if SWAP:
        acc, acc_up = tl.trans(acc), tl.trans(acc_up)
    acc = epilogue(acc * UNDO_SCALE, acc_up * UNDO_SCALE, rows, row_ok, offs_n, n_ok, bias_ptr + expert * stride_bias_e,
                   rw_ptr, n_out, alpha, limit, GATED, HAS_BIAS, CLAMPED, WEIGHTED)
    c_ptrs = c_ptr + rows.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _dequantize_kernel(
    w_ptr, s_ptr, out_ptr, n_rows, total_rows, k_dim, stride_we, stride_wn, stride_se, stride_sg, stride_oe, stride_on,
    ASM: tl.constexpr, BLOCK_R: tl.constexpr, TILES: tl.constexpr,
):
    """BLOCK_R rows x TILES 64-wide K tiles of kernel-form weights -> 16-bit values (rows run over E x N)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = rows < total_rows
    expert, row = (rows // n_rows).to(tl.int64), (rows % n_rows).to(tl.int64)
    cols = tl.arange(0, 32)
    w_rows = w_ptr + expert[:, None] * stride_we + row[:, None] * stride_wn + cols[None, :]
    s_rows = s_ptr + expert * stride_se + row
    o_rows = out_ptr + expert[:, None] * stride_oe + row[:, None] * stride_on + cols[None, :]
    for t in tl.static_range(TILES):
        k = (tl.program_id(1) * TILES + t) * 64
        live = ok & (rows * 0 + k < k_dim)
        packed = tl.load(w_rows + k // 2, mask=live[:, None], other=0)
        s_ptrs = s_rows + (k // 32) * stride_sg
        for half in tl.static_range(2):
            value = _upcast(packed, _scale_factor(s_ptrs + half * stride_sg, live), half == 1, ASM).to(tl.float32)
            tl.store(o_rows + k + half * 32, (value * UNDO_SCALE).to(out_ptr.dtype.element_ty),
                     mask=live[:, None] & (k + half * 32 + cols[None, :] < k_dim))


def dequantize(w: torch.Tensor, scales: torch.Tensor, k_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Kernel-form weights (w [E, N, Kp/2], scales [E, Kp/32, N]) -> [E, N, k_dim] in dtype, with the
    GEMM's own arithmetic (the same values it multiplies, block scales above 2^64 saturated alike).

    For prefill: from a few thousand tokens a step the upcast inside the GEMM (repeated for every
    tile of token rows) costs more than writing the experts once in 16 bits and running the 16-bit
    kernel over them (kernels.fused_moe's DEQUANT entries)."""
    n_experts, n_rows, _ = w.shape
    out = torch.empty((n_experts, n_rows, k_dim), dtype=dtype, device=w.device)
    block_r, tiles = 64, 4
    grid = (triton.cdiv(n_experts * n_rows, block_r), triton.cdiv(triton.cdiv(k_dim, 64), tiles))
    _dequantize_kernel[grid](
        w, scales, out, n_rows, n_experts * n_rows, k_dim, w.stride(0), w.stride(1), scales.stride(0),
        scales.stride(1), out.stride(0), out.stride(1), ASM=w.is_cuda, BLOCK_R=block_r, TILES=tiles,
    )
    return out


def launch_mxfp4_gemm(
    a: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, c: torch.Tensor, weights: torch.Tensor, align: tuple,
    n_valid: int, max_rows: int, block_m: int, cfg: dict, a_div: int, gated: bool, weighted: bool,
    bias: torch.Tensor | None = None, swiglu: tuple[float, float] | None = None,
) -> None:
    """One projection over kernel-form weights (w [E, N, Kp/2], scales [E, Kp/32, N]); K is a's width."""
    sorted_ids, expert_ids, total = align
    n_out = w.shape[1] // 2 if gated else w.shape[1]
    bn = cfg["BLOCK_N"]
    assert cfg["BLOCK_K"] % 64 == 0 and w.stride(-1) == 1 and scales.stride(-1) == 1 and c.stride(-1) == 1
    alpha, limit = swiglu or (1.0, 0.0)
    bias_arg, bias_stride = (w, 0) if bias is None else (bias, bias.stride(0))
    moe_mxfp4_kernel[(triton.cdiv(max_rows, block_m) * triton.cdiv(n_out, bn),)](
        a, w, scales, c, weights, sorted_ids, expert_ids, total, bias_arg,
        n_out, a.shape[1], n_valid, max_rows, alpha, limit,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), scales.stride(0), scales.stride(1), c.stride(0),
        bias_stride, A_DIV=a_div, GATED=gated, WEIGHTED=weighted, HAS_BIAS=bias is not None,
        CLAMPED=swiglu is not None, SWAP=cfg["SWAP"], ASM=cfg.get("ASM", True) and a.is_cuda,
        PRECISION=dot_precision(a.dtype), BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def _gemm(bn: int, bk: int, group: int, warps: int, stages: int, swap: bool) -> dict:
    return {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps, "num_stages": stages, "SWAP": swap}


def default_mxfp4_config(n_tokens: int, top_k: int, n_experts: int, on_gpu: bool) -> dict:
    """Heuristic tiles (the H100 table's picks): weights on the MMA's M side, narrow tiles while a step
    touches few experts (more programs), activations on the M side of the down GEMM for prefill."""
    if not on_gpu:  # interpreter: fewer, larger programs run fastest
        return {"BLOCK_M": 16, "up": _gemm(64, 64, 1, 4, 1, True), "down": _gemm(64, 64, 1, 4, 1, True)}
    rows_per_expert = n_tokens * top_k / max(n_experts, 1)
    if rows_per_expert <= 1:
        return {"BLOCK_M": 16, "up": _gemm(32, 128, 1, 4, 3, True), "down": _gemm(32, 128, 1, 4, 3, True)}
    if rows_per_expert <= 16:
        return {"BLOCK_M": 32, "up": _gemm(64, 64, 1, 4, 3, True), "down": _gemm(64, 64, 1, 4, 3, True)}
    down = _gemm(64, 128, 8, 4, 3, True) if rows_per_expert <= 64 else _gemm(128, 64, 8, 4, 3, False)
    return {"BLOCK_M": 64, "up": _gemm(64, 64, 8, 4, 3, True), "down": down}


# From this many rows an expert (tokens x top_k / experts) a step dequantizes the experts and runs the
# 16-bit kernel: where the two paths cross at GPT-OSS-20B's shape on an H100 (perf/bench_moe_mxfp4.py,
# perf/results/gpu-h100-2026-12-07-s7): the in-register GEMM took 1.55 ms at 2048 tokens and 2.94 ms at
# 4096, the write-out + 16-bit kernel 1.94 and 2.60; linearly between them they meet at ~3100 tokens.
DEQUANT_ROWS_PER_EXPERT = 384


def mxfp4_config(n_tokens: int, top_k: int, n_experts: int, hidden: int, inter: int, dtype: torch.dtype,
                 device: torch.device) -> dict:
    """{"DEQUANT": True} for prefill steps past DEQUANT_ROWS_PER_EXPERT on the GPU, else the GEMM's tiles."""
    if device.type == "cuda" and n_tokens * top_k >= DEQUANT_ROWS_PER_EXPERT * n_experts:
        return {"DEQUANT": True}
    return mxfp4_gemm_config(n_tokens, top_k, n_experts, hidden, inter, dtype, device)


def mxfp4_gemm_config(n_tokens: int, top_k: int, n_experts: int, hidden: int, inter: int, dtype: torch.dtype,
                      device: torch.device) -> dict:
    """Tuned entry nearest in token count when this GPU has a table for the shape, else the heuristic."""
    on_gpu = device.type == "cuda"
    if on_gpu and dtype != torch.float32:
        table = _load_table(config_file_name(n_experts, hidden, inter, device_name(device), MXFP4_KERNEL_LAYOUT))
        if table:
            return table[min(table, key=lambda m: abs(m - n_tokens))]
    return default_mxfp4_config(n_tokens, top_k, n_experts, on_gpu)

"""Dense projections with FP8 weights: x [T, K] @ dequantize_fp8(weight [N, K], scale)^T -> [T, N].

Three forms (kernels.fp8 explains W8A8 and W8A16):
- "w8a16": the Triton kernel below, 16-bit x, weight tiles upcast in registers;
- "w8a8": the same kernel on x quantized per token and 128-group (kernels.fp8.quantize_rows);
- "scaled_mm": cuBLAS FP8 through torch: rowwise for per-channel weight scales (x quantized per
  token), blockwise 1x128 / 128x128 for block scales where this torch build has it (Hopper).
`pick_form` chooses by token count from the measurements in perf/results/fp8-*/.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .common import dot_precision, jit_sized
from .fp8 import GROUP, fp8_k_loop, quantize_rows, scale_block
from .moe_gemm import tile_coords

FORMS = ("w8a16", "w8a8", "scaled_mm")


@jit_sized("n_rows")
def _fp8_linear_kernel(
    a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, n_rows, n_out, k_dim, k_split, stride_am, stride_asm, stride_bn, stride_bsn,
    stride_cs, stride_cm,
    A8: tl.constexpr, SCALE_BLOCK: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Program (tile, split): the split's k_split columns of K (a multiple of 128 and BLOCK_K) for
    one output tile; with several splits each writes its fp32 partial product at split x stride_cs."""
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(n_rows, BLOCK_M), tl.cdiv(n_out, BLOCK_N), GROUP_M)
    split = tl.program_id(1)
    k_lo = split * k_split
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < n_out
    s_cols = bs_ptr + (offs_n // SCALE_BLOCK if SCALE_BLOCK else offs_n).to(tl.int64) * stride_bsn
    s_k = s_cols + k_lo // 128 if SCALE_BLOCK else s_cols
    acc, _ = fp8_k_loop(a_ptr + rows.to(tl.int64)[:, None] * stride_am + k_lo,
                        as_ptr + rows.to(tl.int64) * stride_asm + k_lo // 128,
                        b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn + k_lo, s_k, row_ok, n_ok,
                        tl.minimum(k_split, k_dim - k_lo), 1, 1, 1, 1, 0, 0,
                        A8, SCALE_BLOCK, False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    if not SCALE_BLOCK:
        acc = acc * tl.load(s_cols, mask=n_ok, other=0.0)[None, :]
    c_ptrs = c_ptr + split * stride_cs + rows.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def tile_config(n_rows: int, a8: bool, on_gpu: bool) -> tuple[int, int, int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, splits of K): narrow N tiles with deep K tiles
    at decode sizes (many programs, each streaming long runs of the weight), square FP8 tiles for W8A8
    beyond. From the H100 tile sweep (perf/results/fp8-h100): at 1-8 tokens K tiles of 512 ran 3-16%
    faster than 128; 4-warp 128x128 W8A8 tiles spill (3-4x slower). Every form there streamed the
    weight at under a third of HBM bandwidth at 1-64 tokens (12-15 us for qkv's 10 MB): K splits
    (perf/bench_fp8.py's dense_variants) are the next thing to measure; one split until then."""
    if not on_gpu:
        return 16, 32, 64, 1, 4, 1, 1
    if n_rows <= 16 and not a8:
        return 16, 32, 512, 1, 4, 3, 1
    if n_rows <= 64:
        return 64, 64, 128, 8, 4, 4, 1
    return 128, 128, 128, 8, 8, 3, 1


def pick_form(n_rows: int, block: int, device: torch.device) -> str:
    """From the H100 tables (perf/results/fp8-h100): W8A16 up to 16 tokens (weight reads bound the GEMM;
    no quantization pass); then cuBLAS FP8, except that with block scales our W8A8 kernel led at 64
    tokens on 3 of 4 shapes (cuBLAS blockwise from 256 on: 1.1-1.7x bf16 at 2048-8192 tokens, where
    our W8A8 block kernel reached 0.6-0.7x; rowwise with channel scales 1.1-1.5x)."""
    if n_rows <= 16 or device.type != "cuda":
        return "w8a16"
    if not block:
        return "scaled_mm"
    if n_rows <= 64 or blockwise_scaled_mm_api(device) is None:
        return "w8a8"
    return "scaled_mm"


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, form: str | None = None,
               config: tuple[int, ...] | None = None) -> torch.Tensor:
    """x [..., K] (16-bit or fp32) times FP8 weight [N, K] with block [ceil(N/128), ceil(K/128)] or channel
    [N] / [N, 1] scales -> [..., N] in x's dtype; `form` (one of FORMS) overrides pick_form and `config`
    the Triton forms' tile_config, splits of K included (tests, benches)."""
    k_dim, n_out = x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, k_dim)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    block = scale_block(weight, scale)
    form = form or pick_form(x2.shape[0], block, x.device)
    assert form in FORMS, form
    if form == "scaled_mm":
        out = _scaled_mm(x2, weight, scale, block)
    else:
        out = _triton_linear(x2, weight, scale, block, form == "w8a8", config)
    return out.view(*x.shape[:-1], n_out)


def _triton_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block: int, a8: bool,
                   config: tuple[int, ...] | None) -> torch.Tensor:
    n_rows, k_dim = x.shape
    n_out = weight.shape[0]
    scale = scale if block else scale.reshape(-1)
    assert weight.stride(-1) == 1 and scale.stride(-1) == 1
    out = torch.empty((n_rows, n_out), dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return out
    a, a_scales = quantize_rows(x) if a8 else (x, scale)
    bm, bn, bk, group_m, warps, stages, splits = config or tile_config(n_rows, a8, x.is_cuda)
    assert 128 % bk == 0 or not a8 and bk % 128 == 0, "FP8 K tiles divide 128 (W8A16: or span whole blocks)"
    step = max(bk, 128)  # a split holds whole K tiles and whole scale groups
    k_split = triton.cdiv(triton.cdiv(k_dim, splits), step) * step
    splits = triton.cdiv(k_dim, k_split)
    # Several splits write fp32 partial products, summed below (in a fixed order: deterministic).
    partial = out if splits == 1 else torch.empty((splits, n_rows, n_out), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n_rows, bm) * triton.cdiv(n_out, bn), splits)
    _fp8_linear_kernel[grid](
        a, a_scales, weight, scale, partial, n_rows, n_out, k_dim, k_split, a.stride(0),
        a_scales.stride(0) if a8 else 0, weight.stride(0), scale.stride(0), partial.stride(0) if splits > 1 else 0,
        partial.stride(-2),
        A8=a8, SCALE_BLOCK=block, PRECISION=dot_precision(x.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m,
        num_warps=warps, num_stages=stages,
    )
    if splits > 1:
        out.copy_(partial.sum(dim=0))
    return out


def _scaled_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    """cuBLAS FP8: per-token x scales with channel weight scales, or 1x128 x scales with 128x128 weight blocks."""
    if not block:
        xq, xs = quantize_rows(x, group=x.shape[1])
        return torch._scaled_mm(xq, weight.t(), scale_a=xs, scale_b=scale.reshape(1, -1).float(), out_dtype=x.dtype)
    api = blockwise_scaled_mm_api(x.device)
    assert api is not None, "this torch build has no blockwise torch._scaled_mm"
    return _blockwise(x, weight, scale, api)


def _blockwise(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, api: str) -> torch.Tensor:
    """cuBLAS's blockwise FP8 GEMM (Hopper): x scales [T, K/128] stored column-major, weight scales as
    [K/128, N/128]; cuBLAS wants the token count and the K-block count padded to multiples of 4."""
    n_rows = x.shape[0]
    xq, xs = quantize_rows(F.pad(x, (0, 0, 0, -n_rows % 4)) if n_rows % 4 else x, GROUP)
    a_scale, b_scale = xs.t().contiguous().t(), F.pad(scale, (0, -scale.shape[1] % 4)).t()
    if api == "scaled_mm_v2":
        out = F.scaled_mm(xq, weight.t(), a_scale, F.ScalingType.BlockWise1x128, b_scale,
                          F.ScalingType.BlockWise128x128, output_dtype=x.dtype)
    else:
        out = torch._scaled_mm(xq, weight.t(), scale_a=a_scale, scale_b=b_scale, out_dtype=x.dtype)
    return out[:n_rows]


PROBE_ERRORS: dict[str, str] = {}  # why each blockwise API was refused (the benchmark reports it)


@functools.lru_cache(maxsize=None)
def blockwise_scaled_mm_api(device: torch.device) -> str | None:
    """Which blockwise API this torch build has and computes correctly on a small probe ("scaled_mm_v2":
    torch.nn.functional.scaled_mm with BlockWise recipes; "scaled_mm": torch._scaled_mm), or None
    (older torch or cuBLAS, non-Hopper GPUs, CPU)."""
    if device.type != "cuda":
        return None
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(126, 512, device=device, generator=gen).to(torch.bfloat16)
    wq = torch.randn(256, 512, device=device, generator=gen).to(torch.float8_e4m3fn)
    ws = torch.rand(2, 4, device=device, generator=gen) + 0.5
    xq, xs = quantize_rows(x, GROUP)
    w = wq.float() * ws.repeat_interleave(GROUP, 0).repeat_interleave(GROUP, 1)
    ref = (xq.float() * xs.repeat_interleave(GROUP, 1)) @ w.t()
    for api in ("scaled_mm_v2", "scaled_mm"):
        try:
            out = _blockwise(x, wq, ws, api).float()
        except Exception as exc:  # refused: missing API, cuBLAS without the recipe, layout checks
            PROBE_ERRORS[api] = repr(exc)[:300]
            continue
        err = ((out - ref).norm() / ref.norm()).item()
        if err < 1e-2:
            return api
        PROBE_ERRORS[api] = f"wrong result: relative error {err:.2e}"
    return None

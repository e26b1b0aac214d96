"""FP8 kernels (dense projections, fused MoE, activation quantization) vs the torch reference.

W8A16 forms are compared with the reference on the dequantized weights. W8A8 forms quantize the
activations too (per token and 128-group, FP8's 3 mantissa bits: up to 6% per element), so they
are compared with the reference applied to the activations quantized the same way
(torch_ops.quantize_fp8 with block (1, 128)): what is left is accumulation order and the odd
value rounding to the neighbouring FP8 step, well within the bf16 tolerance.
"""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close, randn

import laminar_kernels as K
from laminar.ops import torch_ops as R
from laminar_kernels.fp8 import quantize_rows
from laminar_kernels.fp8_linear import blockwise_scaled_mm_api, pick_form
from laminar_kernels.moe_config import get_config

ON_GPU = DEVICE == "cuda"
BLOCK = (128, 128)


def _fp8_weight(*shape: int, block: tuple[int, int] | None, gen: torch.Generator):
    """An FP8 weight [..., N, K] and its scales (128x128 blocks, or per channel when block is None)."""
    w = (torch.randn(*shape, generator=gen) * shape[-1] ** -0.5).to(DEVICE)
    return R.quantize_fp8(w, block)


def _qdq(x: torch.Tensor, group: int = 128) -> torch.Tensor:
    """x as W8A8 kernels see it: quantized per row and `group` columns, dequantized to fp32."""
    group = min(group, x.shape[-1])
    q, s = R.quantize_fp8(x.float(), (1, group))
    return q.float() * s.repeat_interleave(group, dim=-1)[..., : x.shape[-1]]


@pytest.mark.parametrize("group", [128, 10**9])
def test_quantize_rows(group: int) -> None:
    """Per-token-group (and per-token) dynamic quantization: torch_ops.quantize_fp8's numbers."""
    x = randn(37, 200, dtype=torch.bfloat16, scale=3.0)
    q, s = quantize_rows(x, group)
    ref_q, ref_s = R.quantize_fp8(x.float(), (1, min(group, 200)))
    torch.testing.assert_close(s, ref_s, rtol=1e-6, atol=0)
    same = (q.view(torch.uint8) == ref_q.view(torch.uint8)).float().mean().item()
    assert same > 0.999, f"{same:.4f} of the FP8 bytes agree"  # a division ulp may flip a tie
    assert (q.float().abs().amax(dim=1) == 448).all(), "each row's largest value maps to FP8's largest"


# (T, N, K): a partial N block; K = 160 (a partial K tile, group and 128 block).
LINEAR_SHAPES = [(1, 96, 256), (7, 256, 128), (40, 96, 384), (5, 48, 160)]


@pytest.mark.parametrize("form", ["w8a16", "w8a8", "scaled_mm"])
@pytest.mark.parametrize("block", [BLOCK, None], ids=["block", "channel"])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_fp8_linear(shape: tuple[int, int, int], block: tuple[int, int] | None, form: str) -> None:
    n_tok, n_out, k_dim = shape
    if form == "scaled_mm" and block and blockwise_scaled_mm_api(torch.device(DEVICE)) is None:
        pytest.skip("no blockwise torch._scaled_mm here")
    gen = torch.Generator().manual_seed(n_tok)
    w, s = _fp8_weight(n_out, k_dim, block=block, gen=gen)
    x = randn(n_tok, k_dim, dtype=torch.bfloat16, gen=gen)
    group = k_dim if form == "scaled_mm" and block is None else 128
    xs = x.float() if form == "w8a16" else _qdq(x, group)
    ref = xs @ R.dequantize_fp8(w, s, torch.float32).t()
    assert_close(K.fp8_linear(x, w, s, form=form), ref, torch.bfloat16)


def test_fp8_linear_default_form_and_leading_dims() -> None:
    """The form pick_form chooses, on [B, S, K] input and [N, 1] channel scales."""
    gen = torch.Generator().manual_seed(3)
    w, s = _fp8_weight(64, 128, block=None, gen=gen)
    x = randn(2, 3, 128, dtype=torch.bfloat16, gen=gen)
    out = K.fp8_linear(x, w, s[:, None])
    form = pick_form(6, 0, x.device)
    xs = x.view(6, 128).float() if form == "w8a16" else _qdq(x.view(6, 128), 128 if form == "w8a8" else 10**9)
    assert_close(out.view(6, 64), xs @ R.dequantize_fp8(w, s, torch.float32).t(), torch.bfloat16)


def _moe_inputs(n_tok: int, n_experts: int, top_k: int, hidden: int, inter: int, block, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(n_tok * 31 + inter)
    x = randn(n_tok, hidden, dtype=dtype, gen=gen)
    w13, s13 = _fp8_weight(n_experts, 2 * inter, hidden, block=block, gen=gen)
    w2, s2 = _fp8_weight(n_experts, hidden, inter, block=block, gen=gen)
    weights, ids = R.route_topk(randn(n_tok, n_experts, dtype=torch.float32, scale=3.0, gen=gen), top_k, True)
    return x, w13, s13, w2, s2, weights, ids


def _w8a8_reference(x, w13, s13, w2, s2, weights, ids) -> torch.Tensor:
    """torch_ops.fused_moe's math with x and the SwiGLU output quantized per token and 128-group."""
    up = R.dequantize_fp8(w13, s13, torch.float32)[ids]  # [T, k, 2I, H]
    down = R.dequantize_fp8(w2, s2, torch.float32)[ids]  # [T, k, H, I]
    gate_up = torch.einsum("th,tkoh->tko", _qdq(x), up)
    h = R.silu_and_mul(gate_up)
    y = torch.einsum("tki,tkhi->tkh", _qdq(h.flatten(0, 1)).view_as(h), down)
    return (y * weights[..., None].float()).sum(1)


# (tokens, E, top_k, H, I): one token; H = 64 (one partial scale block); two activation groups per row.
MOE_SHAPES = [(1, 8, 2, 256, 128), (13, 8, 3, 128, 128), (9, 4, 2, 64, 256)]


@pytest.mark.parametrize("a8", [True, False], ids=["w8a8", "w8a16"])
@pytest.mark.parametrize("block", [BLOCK, None], ids=["block", "channel"])
@pytest.mark.parametrize("shape", MOE_SHAPES)
def test_fused_moe_fp8(shape: tuple[int, ...], block, a8: bool) -> None:
    x, w13, s13, w2, s2, weights, ids = _moe_inputs(*shape, block=block, dtype=torch.bfloat16)
    up = {"BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 2, "num_warps": 4, "num_stages": 2}
    down = {"BLOCK_N": 32, "BLOCK_K": 128, "GROUP_M": 1, "num_warps": 4, "num_stages": 2}
    out = K.fused_moe(x, w13, w2, weights, ids, w13_scales=s13, w2_scales=s2,
                      config={"BLOCK_M": 16, "A8": a8, "up": up, "down": down})
    if a8:
        ref = _w8a8_reference(x, w13, s13, w2, s2, weights, ids)
    else:
        ref = R.fused_moe(x.float(), w13, w2, weights, ids, w13_scales=s13, w2_scales=s2)
    assert_close(out, ref, torch.bfloat16)


@pytest.mark.parametrize("block", [BLOCK, None], ids=["block", "channel"])
def test_fused_moe_fp8_deep_k_tiles(block) -> None:
    """W8A16 K tiles over several weight blocks (256 deep: the up GEMM's two blocks, the down GEMM's one
    and a masked half), each block's rows scaled before the dot. Those weights round to bf16 once, which
    the interpreter does by truncation (conftest's TOL note): 1.5x the bf16 tolerance there."""
    x, w13, s13, w2, s2, weights, ids = _moe_inputs(5, 8, 2, 256, 128, block=block, dtype=torch.bfloat16)
    gemm = {"BLOCK_N": 32, "BLOCK_K": 256, "GROUP_M": 1, "num_warps": 4, "num_stages": 2}
    out = K.fused_moe(x, w13, w2, weights, ids, w13_scales=s13, w2_scales=s2,
                      config={"BLOCK_M": 16, "A8": False, "up": gemm, "down": gemm})
    ref = R.fused_moe(x.float(), w13, w2, weights, ids, w13_scales=s13, w2_scales=s2)
    assert_close(out, ref, torch.bfloat16, scale=1.5 if DEVICE == "cpu" else 1.0)


@pytest.mark.parametrize("block", [BLOCK, None], ids=["block", "channel"])
@pytest.mark.parametrize("block_k", [256, 512])
def test_fp8_linear_deep_k_tiles(block_k: int, block) -> None:
    """The dense W8A16 kernel with K tiles over several 128x128 blocks (the decode tiles; a partial last
    tile at K = 384 with 256 or 512), through the tile override."""
    gen = torch.Generator().manual_seed(5)
    w, s = _fp8_weight(96, 384, block=block, gen=gen)
    x = randn(3, 384, dtype=torch.bfloat16, gen=gen)
    out = K.fp8_linear(x, w, s, form="w8a16", config=(16, 32, block_k, 1, 4, 2, 1))
    assert_close(out, x.float() @ R.dequantize_fp8(w, s, torch.float32).t(), torch.bfloat16,
                 scale=1.5 if DEVICE == "cpu" else 1.0)


@pytest.mark.parametrize("form,block_k", [("w8a16", 128), ("w8a16", 256), ("w8a8", 64), ("w8a8", 128)])
@pytest.mark.parametrize("block", [BLOCK, None], ids=["block", "channel"])
@pytest.mark.parametrize("splits", [2, 3, 8])
def test_fp8_linear_split_k(splits: int, block, form: str, block_k: int) -> None:
    """K split over several programs whose fp32 partial products are summed: K = 416 gives splits of
    whole tiles and scale groups with a partial last one (8 asked: as many as K has 128-column steps)."""
    gen = torch.Generator().manual_seed(splits)
    w, s = _fp8_weight(80, 416, block=block, gen=gen)
    x = randn(5, 416, dtype=torch.bfloat16, gen=gen)
    out = K.fp8_linear(x, w, s, form=form, config=(16, 32, block_k, 1, 4, 2, splits))
    xs = x.float() if form == "w8a16" else _qdq(x, 128)
    assert_close(out, xs @ R.dequantize_fp8(w, s, torch.float32).t(), torch.bfloat16, scale=1.5 if DEVICE == "cpu" else 1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_moe_fp8_default_config(dtype: torch.dtype) -> None:
    """The table / heuristic path, fp32 activations included (whose W8A16 dots run in fp32)."""
    x, w13, s13, w2, s2, weights, ids = _moe_inputs(6, 8, 2, 128, 128, BLOCK, dtype)
    out = K.fused_moe(x, w13, w2, weights, ids, w13_scales=s13, w2_scales=s2)
    if get_config(6, 2, 8, 128, 128, dtype, x.device, "FP8").get("A8"):
        ref = _w8a8_reference(x, w13, s13, w2, s2, weights, ids)
    else:
        ref = R.fused_moe(x.float(), w13, w2, weights, ids, w13_scales=s13, w2_scales=s2)
    assert_close(out, ref, dtype, scale=10.0 if dtype == torch.float32 else 1.0)  # fp32: an FP8 tie may flip


def test_w8a8_error_is_fp8_sized() -> None:
    """The activation quantization the W8A8 reference models costs about FP8's rounding, no more."""
    x, w13, s13, w2, s2, weights, ids = _moe_inputs(13, 8, 3, 128, 128, BLOCK, torch.bfloat16)
    exact = R.fused_moe(x.float(), w13, w2, weights, ids, w13_scales=s13, w2_scales=s2)
    err = ((_w8a8_reference(x, w13, s13, w2, s2, weights, ids) - exact).norm() / exact.norm()).item()
    assert 5e-3 < err < 6e-2, err


MOE_REAL = [(1, 128, 8, 2048, 768), (64, 128, 8, 2048, 768), (2048, 128, 8, 2048, 768), (300, 128, 8, 2048, 384)]


@pytest.mark.skipif(not ON_GPU, reason="real sizes on the GPU only")
@pytest.mark.parametrize("block", [BLOCK, None], ids=["block", "channel"])
@pytest.mark.parametrize("shape", MOE_REAL)
def test_fused_moe_fp8_real(shape: tuple[int, ...], block) -> None:
    """Qwen3-30B-A3B's experts (and the TP2 shard) through the tuned tables. The W8A8 rows are held to
    FP8's activation rounding (test_w8a8_error_is_fp8_sized) against the unquantized reference."""
    x, w13, s13, w2, s2, weights, ids = _moe_inputs(*shape, block=block, dtype=torch.bfloat16)
    out = K.fused_moe(x, w13, w2, weights, ids, w13_scales=s13, w2_scales=s2)
    ref = R.fused_moe(x.float(), w13, w2, weights, ids, w13_scales=s13, w2_scales=s2)
    a8 = get_config(shape[0], shape[2], shape[1], shape[3], shape[4], x.dtype, x.device, "FP8").get("A8")
    assert_close(out, ref, torch.bfloat16, scale=6.0 if a8 else 1.0)


@pytest.mark.skipif(not ON_GPU, reason="real sizes on the GPU only")
@pytest.mark.parametrize("form", [None, "w8a16", "w8a8", "scaled_mm"])
@pytest.mark.parametrize("block", [BLOCK, None], ids=["block", "channel"])
@pytest.mark.parametrize("n_tok", [1, 64, 2048])
def test_fp8_linear_real(n_tok: int, block, form: str | None) -> None:
    """Qwen3-30B-A3B's qkv projection (N 5120, K 2048) in every form, the default pick included."""
    if form == "scaled_mm" and block and blockwise_scaled_mm_api(torch.device(DEVICE)) is None:
        pytest.skip("no blockwise torch._scaled_mm here")
    gen = torch.Generator().manual_seed(n_tok)
    w, s = _fp8_weight(5120, 2048, block=block, gen=gen)
    x = randn(n_tok, 2048, dtype=torch.bfloat16, gen=gen)
    out = K.fp8_linear(x, w, s, form=form)
    form = form or pick_form(n_tok, 128 if block else 0, x.device)
    group = 2048 if form == "scaled_mm" and block is None else 128
    xs = x.float() if form == "w8a16" else _qdq(x, group)
    assert_close(out, xs @ R.dequantize_fp8(w, s, torch.float32).t(), torch.bfloat16)

"""Fused MoE with GPT-OSS's additions (biases, clamped SwiGLU, MXFP4 weights) vs the torch reference."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close, randn

import laminar_kernels as K
from laminar.ops import torch_ops as R

ON_GPU = DEVICE == "cuda"
SWIGLU = (1.702, 7.0)
# (tokens, E, top_k, H, I): one token; K not a multiple of the tile (96); many experts, few rows each.
SMALL = [(1, 8, 2, 64, 64), (13, 8, 4, 96, 64), (6, 32, 4, 64, 96)]
REAL = [(1, 32, 4, 2880, 2880), (64, 32, 4, 2880, 2880), (1000, 32, 4, 2880, 2880), (300, 32, 4, 2880, 1440)]


def _mxfp4(experts: int, rows: int, cols: int, exponents: tuple[int, int], gen: torch.Generator):
    blocks = torch.randint(0, 256, (experts, rows, cols // 32, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(*exponents, (experts, rows, cols // 32), dtype=torch.uint8, generator=gen)
    return blocks.to(DEVICE), scales.to(DEVICE)


def _inputs(n_tok: int, n_experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype):
    """Gate / up pre-activations of a few units std, so that many pass the clamp at 7."""
    gen = torch.Generator().manual_seed(n_tok * 7 + hidden)
    x = randn(n_tok, hidden, dtype=dtype, gen=gen)
    up = _mxfp4(n_experts, 2 * inter, hidden, (123, 127), gen)
    down = _mxfp4(n_experts, hidden, inter, (117, 120), gen)
    b13 = randn(n_experts, 2 * inter, dtype=dtype, scale=2.0, gen=gen)
    b2 = randn(n_experts, hidden, dtype=dtype, gen=gen)
    weights, ids = R.route_topk(randn(n_tok, n_experts, dtype=torch.float32, scale=3.0, gen=gen), top_k, True)
    return x, up, down, b13, b2, weights, ids


def _reference(x, up, down, b13, b2, weights, ids) -> torch.Tensor:
    return R.fused_moe(x.float(), up[0], down[0], weights, ids, b13=b13.float(), b2=b2.float(),
                       w13_scales=up[1], w2_scales=down[1], swiglu=SWIGLU)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SMALL + (REAL if ON_GPU else []))
def test_fused_moe_mxfp4(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Packed weights dequantized in registers, biases and the clamp fused."""
    if ON_GPU and dtype == torch.float32 and shape[0] > 64:
        pytest.skip("fp32 at this size only repeats the bf16 check")
    x, up, down, b13, b2, weights, ids = _inputs(*shape, dtype=dtype)
    ref = _reference(x, up, down, b13, b2, weights, ids)
    out = K.fused_moe(x, up[0], down[0], weights, ids, b13=b13, b2=b2, w13_scales=up[1], w2_scales=down[1],
                      swiglu=SWIGLU)
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_moe_dense_biased_clamped(dtype: torch.dtype) -> None:
    """The dequantize-at-load fallback: the same experts as dense weights."""
    x, up, down, b13, b2, weights, ids = _inputs(13, 8, 4, 96, 64, dtype)
    w13, w2 = R.dequantize_mxfp4(*up, dtype), R.dequantize_mxfp4(*down, dtype)
    out = K.fused_moe(x, w13, w2, weights, ids, b13=b13, b2=b2, swiglu=SWIGLU)
    assert_close(out, _reference(x, up, down, b13, b2, weights, ids), dtype)


def test_tma_form_with_biases_and_clamp() -> None:
    """A table's "TMA" row over dense experts with biases and the clamp (the dequantized GPT-OSS
    fallback): the activation in sorted order between the GEMMs; MXFP4 experts ignore the flag."""
    x, up, down, b13, b2, weights, ids = _inputs(13, 8, 4, 96, 64, torch.bfloat16)
    gemm = {"BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 1, "num_warps": 4, "num_stages": 2}
    cfg = {"BLOCK_M": 16, "TMA": True, "up": gemm, "down": gemm}
    ref = _reference(x, up, down, b13, b2, weights, ids)
    w13, w2 = R.dequantize_mxfp4(*up, torch.bfloat16), R.dequantize_mxfp4(*down, torch.bfloat16)
    assert_close(K.fused_moe(x, w13, w2, weights, ids, b13=b13, b2=b2, swiglu=SWIGLU, config=cfg), ref, torch.bfloat16)
    out = K.fused_moe(x, up[0], down[0], weights, ids, b13=b13, b2=b2, w13_scales=up[1], w2_scales=down[1],
                      swiglu=SWIGLU, config=cfg)
    assert_close(out, ref, torch.bfloat16)


def test_down_bias_only_on_one_rank() -> None:
    """Ranks other than 0 pass no down-projection bias (the all-reduce adds rank 0's once)."""
    x, up, down, b13, _, weights, ids = _inputs(6, 8, 2, 64, 64, torch.float32)
    ref = R.fused_moe(x, up[0], down[0], weights, ids, b13=b13, w13_scales=up[1], w2_scales=down[1], swiglu=SWIGLU)
    out = K.fused_moe(x, up[0], down[0], weights, ids, b13=b13, w13_scales=up[1], w2_scales=down[1], swiglu=SWIGLU)
    assert_close(out, ref, torch.float32)


def test_inputs_pass_the_clamp() -> None:
    x, up, _, b13, _, _, _ = _inputs(13, 8, 4, 96, 64, torch.float32)
    gate_up = x.float() @ R.dequantize_mxfp4(*up, torch.float32)[0].t() + b13[0]
    assert 0.05 < (gate_up.abs() > SWIGLU[1]).float().mean() < 0.6

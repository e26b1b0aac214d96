"""Fused MoE (align + gated grouped GEMMs + top-k sum) vs the torch reference."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close, randn

import laminar_kernels as K
from laminar.ops import torch_ops as R
from laminar_kernels.moe_align import moe_align

ON_GPU = DEVICE == "cuda"
# (tokens, E, top_k, H, I): one token, ragged sizes with empty experts, non-power-of-two dims.
SMALL = [(1, 8, 2, 64, 32), (13, 8, 3, 64, 48), (6, 32, 4, 96, 64)]
REAL = [
    (1, 128, 8, 2048, 768), (64, 128, 8, 2048, 768), (8192, 128, 8, 2048, 768),
    (300, 128, 8, 2048, 384), (513, 32, 4, 2880, 2880),
]


def _moe_inputs(n_tok: int, n_experts: int, top_k: int, hidden: int, inter: int, dtype: torch.dtype):
    x = randn(n_tok, hidden, dtype=dtype)
    w13 = randn(n_experts, 2 * inter, hidden, dtype=dtype, scale=hidden**-0.5)
    w2 = randn(n_experts, hidden, inter, dtype=dtype, scale=inter**-0.5)
    weights, ids = R.route_topk(randn(n_tok, n_experts, dtype=torch.float32, scale=3.0), top_k, True)
    return x, w13, w2, weights, ids


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SMALL + (REAL if ON_GPU else []))
def test_fused_moe(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if ON_GPU and dtype == torch.float32 and shape[0] * shape[3] > 2048 * 1024:
        pytest.skip("fp32 reference at this size only repeats the bf16 check")
    x, w13, w2, weights, ids = _moe_inputs(*shape, dtype=dtype)
    out = K.fused_moe(x, w13, w2, weights, ids)
    ref = R.fused_moe(x.float(), w13.float(), w2.float(), weights, ids)
    assert_close(out, ref, dtype)


def test_fused_moe_skewed_routing() -> None:
    """Every token on the same few experts: long runs per expert, most experts empty."""
    x, w13, w2, weights, _ = _moe_inputs(40, 16, 2, 64, 32, torch.bfloat16)
    ids = torch.stack([torch.full((40,), 5), torch.randint(14, 16, (40,))], 1).to(DEVICE)
    ref = R.fused_moe(x.float(), w13.float(), w2.float(), weights, ids)
    assert_close(K.fused_moe(x, w13, w2, weights, ids), ref, torch.bfloat16)


@pytest.mark.parametrize("tma, persistent", [(False, 0), (True, 0), (True, 1)])
def test_fused_moe_explicit_tiles(tma: bool, persistent: int) -> None:
    """A tuned-table style config: partial N and K tiles, grouped order, both kernels (pointer form;
    TMA form with the activation in sorted order), and the TMA form's persistent tile loop (fewer
    programs than tiles, the tile count read on the device)."""
    x, w13, w2, weights, ids = _moe_inputs(40, 16, 3, 96, 80, torch.bfloat16)
    gemm = {"BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 2, "num_warps": 4, "num_stages": 3, "PERSISTENT": persistent}
    out = K.fused_moe(x, w13, w2, weights, ids, config={"BLOCK_M": 16, "TMA": tma, "up": gemm, "down": gemm})
    assert_close(out, R.fused_moe(x.float(), w13.float(), w2.float(), weights, ids), torch.bfloat16)


@pytest.mark.parametrize("n_tok,n_experts,top_k,block_m", [(1, 8, 2, 16), (37, 20, 3, 16), (100, 4, 2, 64)])
def test_moe_align(n_tok: int, n_experts: int, top_k: int, block_m: int) -> None:
    ids = torch.randint(0, n_experts, (n_tok, top_k), device=DEVICE)
    sorted_ids, expert_ids, total = moe_align(ids, n_experts, block_m)
    flat = ids.flatten()
    n_valid = flat.numel()
    counts = torch.bincount(flat, minlength=n_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    assert int(total) == int(padded.sum())
    start = 0
    for e in range(n_experts):
        run = sorted_ids[start : start + padded[e]]
        real, pad = run[: counts[e]], run[counts[e] :]
        assert (real < n_valid).all() and (flat[real.long()] == e).all() and (pad == n_valid).all()
        assert (expert_ids[start // block_m : (start + padded[e]) // block_m] == e).all()
        start += int(padded[e])
    assert start <= sorted_ids.numel()  # entries from the total on are unset: no GEMM reads them
    real = sorted_ids[:start][sorted_ids[:start] < n_valid]
    assert torch.equal(torch.sort(real).values.long(), torch.arange(n_valid, device=DEVICE))

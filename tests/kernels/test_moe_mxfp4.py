"""kernels.moe_mxfp4 over kernels.mxfp4_layout's form vs the torch reference on the release form."""
from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from helpers import DEVICE, assert_close
from test_moe_gpt_oss import REAL, SWIGLU, _inputs, _reference

import laminar_kernels as K
from laminar.formats.mxfp4 import Mxfp4
from laminar.ops import torch_ops as R
from laminar_kernels.moe_mxfp4 import _scale_factor, _upcast, dequantize
from laminar_kernels.mxfp4_layout import from_kernel_layout, to_kernel_layout

ON_GPU = DEVICE == "cuda"


@pytest.mark.parametrize("k", [64, 96, 2880])
def test_layout_round_trips(k: int) -> None:
    """Every byte and scale comes back; K pads to whole 64-value tiles with zero codes and scales."""
    gen = torch.Generator().manual_seed(k)
    blocks = torch.randint(0, 256, (2, 3, k // 32, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(0, 256, (2, 3, k // 32), dtype=torch.uint8, generator=gen)
    values, t_scales = to_kernel_layout(blocks, scales)
    k_pad = -(-k // 64) * 64
    assert values.shape == (2, 3, k_pad // 2) and t_scales.shape == (2, k_pad // 32, 3)
    back = from_kernel_layout(values, t_scales, k)
    assert torch.equal(back[0], blocks) and torch.equal(back[1], scales)


def test_layout_tile_order() -> None:
    """Byte j of tile t holds value 64t + j (low nibble) and 64t + 32 + j (high): the kernel's split."""
    gen = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (1, 128 // 32, 16), dtype=torch.uint8, generator=gen)
    codes = torch.stack((blocks & 15, blocks >> 4), dim=-1).flatten(-3)  # [1, 128] in K order
    values, _ = to_kernel_layout(blocks, torch.zeros(1, 4, dtype=torch.uint8))
    tiles = values.view(1, 2, 32)
    assert torch.equal(tiles & 15, codes.view(1, 2, 2, 32)[:, :, 0]) and torch.equal(tiles >> 4, codes.view(1, 2, 2, 32)[:, :, 1])


@triton.jit
def _upcast_all(packed_ptr, scale_ptr, out_ptr, HIGH: tl.constexpr, ASM: tl.constexpr):
    rows, cols = tl.arange(0, 8), tl.arange(0, 32)
    packed = tl.load(packed_ptr + rows[:, None] * 32 + cols[None, :])
    factor = _scale_factor(scale_ptr + rows, rows < 8)
    tl.store(out_ptr + rows[:, None] * 32 + cols[None, :], _upcast(packed, factor, HIGH, ASM).to(tl.float32))


@pytest.mark.parametrize("asm", [False, True] if ON_GPU else [False])
@pytest.mark.parametrize("high", [False, True])
def test_upcast_is_exact(high: bool, asm: bool) -> None:
    """All 256 bytes, at block scales across the exact range (65..191): value * 2^(s - 127) * 2^-63 exactly."""
    packed = torch.arange(256, dtype=torch.uint8, device=DEVICE)
    scales = torch.tensor([65, 100, 117, 120, 127, 128, 160, 191], dtype=torch.uint8, device=DEVICE)
    out = torch.empty(256, dtype=torch.float32, device=DEVICE)
    _upcast_all[(1,)](packed, scales, out, high, asm)
    codes = (packed >> 4) if high else (packed & 15)
    lut = torch.tensor(R.FP4_VALUES, dtype=torch.float64, device=DEVICE)
    expected = lut[codes.long()] * torch.exp2(scales.double().repeat_interleave(32) - 127 - 63)
    assert torch.equal(out.double(), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [96, 2880])
def test_dequantize_matches_reference(k: int, dtype: torch.dtype) -> None:
    """The prefill path's expert write-out: exactly the release's values, ragged K (padding dropped) included."""
    gen = torch.Generator().manual_seed(k)
    blocks = torch.randint(0, 256, (3, 40, k // 32, 16), dtype=torch.uint8, generator=gen).to(DEVICE)
    scales = torch.randint(65, 192, (3, 40, k // 32), dtype=torch.uint8, generator=gen).to(DEVICE)
    out = dequantize(*to_kernel_layout(blocks, scales), k, dtype)
    assert out.dtype == dtype and torch.equal(out, R.dequantize_mxfp4(blocks, scales, dtype))


# (swap, BLOCK_N, BLOCK_K) per GEMM: weights on the MMA's M side (decode) or activations (prefill), one or
# two 64-value layout tiles a step (the second masked off past a ragged K); "dequant" writes the experts
# out in 16 bits and runs the dense kernel (prefill-sized steps).
FORMS = {"swap": (True, 32, 64), "plain": (False, 64, 128)}
SMALL = [(1, 8, 2, 64, 64, "swap", torch.bfloat16), (13, 8, 4, 96, 64, "swap", torch.bfloat16),
         (13, 8, 4, 96, 64, "plain", torch.bfloat16), (5, 8, 4, 64, 96, "plain", torch.float32),
         (13, 8, 4, 96, 64, "dequant", torch.bfloat16)]
GPU_CASES = [(*shape, form, torch.bfloat16) for shape in REAL for form in (*FORMS, "dequant", None)]


def _config(form: str | None, block_m: int = 16) -> dict | None:
    if form is None:  # the tuned table / heuristic
        return None
    if form == "dequant":
        return {"DEQUANT": True}
    swap, bn, bk = FORMS[form]
    gemm = {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 1, "num_warps": 4, "num_stages": 2 if ON_GPU else 1, "SWAP": swap}
    return {"BLOCK_M": block_m if swap else max(block_m, 64 if ON_GPU else 16), "up": gemm, "down": gemm}


@pytest.mark.parametrize("case", SMALL + (GPU_CASES if ON_GPU else []), ids=str)
def test_fused_moe_kernel_layout(case: tuple) -> None:
    """Biases, the clamped SwiGLU, ragged K (96) and N, in every kernel form, against the dequantized reference."""
    *shape, form, dtype = case
    x, up, down, b13, b2, weights, ids = _inputs(*shape, dtype=dtype)
    ref = _reference(x, up, down, b13, b2, weights, ids)
    (w13, s13), (w2, s2) = to_kernel_layout(*up), to_kernel_layout(*down)
    out = K.fused_moe(x, w13, w2, weights, ids, b13=b13, b2=b2, w13_scales=s13, w2_scales=s2, swiglu=SWIGLU,
                      config=_config(form))
    assert_close(out, ref, dtype)


def test_post_load_relays_experts_for_the_kernels_only() -> None:
    """The MXFP4 format's load-time hook: the kernel layout for the Triton ops, the release's for the reference."""
    gen = torch.Generator().manual_seed(2)
    blocks, scales = (torch.nn.Parameter(t, requires_grad=False) for t in (
        torch.randint(0, 256, (2, 96, 2, 16), dtype=torch.uint8, generator=gen),
        torch.randint(0, 256, (2, 96, 2), dtype=torch.uint8, generator=gen)))
    assert Mxfp4().post_load(R, blocks, scales) == (blocks, scales)
    values, kernel_scales = Mxfp4().post_load(K, blocks, scales)
    assert values.shape == (2, 96, 32) and kernel_scales.shape == (2, 2, 96)
    assert torch.equal(from_kernel_layout(values, kernel_scales, 64)[0], blocks)


def test_expert_scratch_counts_the_prefill_write_out() -> None:
    """KV sizing reserves the 16-bit experts a prefill-sized step writes out, and nothing below the threshold."""
    from laminar.formats.base import UNQUANTIZED
    from laminar_kernels.moe_mxfp4 import DEQUANT_ROWS_PER_EXPERT

    at = DEQUANT_ROWS_PER_EXPERT * 32 // 4  # GPT-OSS-20B: 32 experts, top-4
    assert Mxfp4().expert_scratch_bytes(32, 2880, 2880, at, 4, torch.bfloat16) == 32 * 3 * 2880 * 2880 * 2
    assert Mxfp4().expert_scratch_bytes(32, 2880, 2880, at - 1, 4, torch.bfloat16) == 0
    assert UNQUANTIZED.expert_scratch_bytes(32, 2880, 2880, at, 4, torch.bfloat16) == 0

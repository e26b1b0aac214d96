"""The FP8 weight reference (laminar.ops.torch_ops): block and per-channel scales round-trip."""
from __future__ import annotations

import pytest
import torch

from laminar.ops.torch_ops import FP8_MAX, dequantize_fp8, fused_moe, quantize_fp8


@pytest.mark.parametrize("block", [(128, 128), (4, 8), None])
def test_quantize_then_dequantize_is_close(block: tuple[int, int] | None) -> None:
    torch.manual_seed(0)
    w = torch.randn(3, 20, 36) * torch.linspace(0.1, 10, 36)  # ragged against the blocks
    q, scale = quantize_fp8(w, block)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert q.float().abs().max() <= FP8_MAX
    back = dequantize_fp8(q, scale, torch.float32)
    # e4m3 keeps 3 mantissa bits; values far below their block's largest fall into its subnormals
    assert torch.allclose(back, w, rtol=0.07, atol=w.abs().max().item() / FP8_MAX / 256)


def test_block_scales_apply_per_block() -> None:
    q = torch.ones(4, 8).to(torch.float8_e4m3fn)
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # 2 x 4 blocks
    expect = torch.tensor([[1.0] * 4 + [2.0] * 4] * 2 + [[3.0] * 4 + [4.0] * 4] * 2)
    assert torch.equal(dequantize_fp8(q, scale, torch.float32), expect)
    channel = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(dequantize_fp8(q, channel, torch.float32), channel[:, None].expand(4, 8))
    assert torch.equal(dequantize_fp8(q, channel[:, None], torch.float32), channel[:, None].expand(4, 8))


def test_partial_blocks_are_power_of_two_blocks() -> None:
    w = torch.randn(160, 300)
    q, scale = quantize_fp8(w, (128, 128))
    assert scale.shape == (2, 3)
    expect = q.float() * scale.repeat_interleave(128, 0).repeat_interleave(128, 1)[:160, :300]
    assert torch.equal(dequantize_fp8(q, scale, torch.float32), expect)


def test_fused_moe_reference_reads_fp8_experts() -> None:
    torch.manual_seed(0)
    e, h, i, t = 4, 16, 8, 5
    w13, w2 = torch.randn(e, 2 * i, h), torch.randn(e, h, i)
    (q13, s13), (q2, s2) = quantize_fp8(w13, (8, 8)), quantize_fp8(w2, (8, 8))
    x = torch.randn(t, h)
    weights, ids = torch.softmax(torch.randn(t, 2), -1), torch.randint(0, e, (t, 2))
    got = fused_moe(x, q13, q2, weights, ids, w13_scales=s13, w2_scales=s2)
    ref = fused_moe(x, dequantize_fp8(q13, s13, x.dtype), dequantize_fp8(q2, s2, x.dtype), weights, ids)
    assert torch.equal(got, ref)

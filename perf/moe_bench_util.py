"""Shared MoE benchmark inputs and the torch._grouped_mm baseline (used by tune_moe.py and bench_kernels.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from laminar.ops.torch_ops import quantize_fp8


def moe_inputs(n_tok: int, n_experts: int, top_k: int, hidden: int, inter: int, seed: int = 0):
    """bf16 activations and weights, uniform random routing (top_k distinct experts per token)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n_tok, hidden, device="cuda", generator=g).to(torch.bfloat16)
    w13 = (torch.randn(n_experts, 2 * inter, hidden, device="cuda", generator=g) * hidden**-0.5).to(torch.bfloat16)
    w2 = (torch.randn(n_experts, hidden, inter, device="cuda", generator=g) * inter**-0.5).to(torch.bfloat16)
    ids = torch.rand(n_tok, n_experts, device="cuda", generator=g).argsort(dim=1)[:, :top_k]
    weights = torch.softmax(torch.randn(n_tok, top_k, device="cuda", generator=g), dim=-1)
    return x, w13, w2, weights, ids


def mxfp4_weights(n_experts: int, rows: int, cols: int, gen: torch.Generator, device: str = "cuda"):
    """Random MXFP4 experts (blocks [E, rows, cols/32, 16], scales [E, rows, cols/32]) near std 0.02, as the
    dummy loader draws them: uniform e2m1 codes (RMS ~2.9) at exponent 120 (2^-7)."""
    blocks = torch.randint(0, 256, (n_experts, rows, cols // 32, 16), dtype=torch.uint8, generator=gen)
    return blocks.to(device), torch.full((n_experts, rows, cols // 32), 120, dtype=torch.uint8, device=device)


def fp8_weights(w: torch.Tensor, block: tuple[int, int] | None = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """Experts [E, N, K] quantized to FP8 with 128x128 block (or, block None, per-channel) scales, one
    expert at a time so that the fp32 intermediates stay small (the tuner's compile workers run 16 at once)."""
    parts = [quantize_fp8(w[e], block) for e in range(w.shape[0])]
    return torch.stack([q for q, _ in parts]), torch.stack([s for _, s in parts])


def grouped_mm_moe(x, w13_t, w2_t, weights, ids):
    """The torch baseline: sort rows by expert, two torch._grouped_mm calls, weighted scatter-add.

    w13_t [E, H, 2I] and w2_t [E, I, H] are transposed views of the kernel's weights.
    """
    n_tok, top_k = ids.shape
    flat = ids.flatten()
    order = torch.argsort(flat)
    offs = torch.cumsum(torch.bincount(flat, minlength=w13_t.shape[0]), 0).to(torch.int32)
    rows = x[order // top_k]
    h = torch._grouped_mm(rows, w13_t, offs=offs)
    gate, up = h.chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(gate) * up, w2_t, offs=offs)
    y = y.float() * weights.flatten()[order, None]
    out = torch.zeros(n_tok, x.shape[1], device=x.device, dtype=torch.float32)
    out.index_add_(0, order // top_k, y)
    return out.to(x.dtype)

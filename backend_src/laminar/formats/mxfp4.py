"""MXFP4 experts as OpenAI's GPT-OSS release stores them (`quant_method: "mxfp4"`).

The weight holds packed e2m1 blocks uint8 [E, N, K/32, 16] and the scales their e8m0 exponents
uint8 [E, N, K/32] (the layout of torch_ops.dequantize_mxfp4), which the fused MoE decodes as it
multiplies. Only the experts are MXFP4; the GPT-OSS loader places the `*_blocks` / `*_scales`
tensors itself (laminar.models.gpt_oss_weights), since they are named after the stacked experts.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from laminar.formats.base import WeightFormat
from laminar.ops import torch_ops

GROUP = 32  # values per e8m0 scale
# Exponent of the dummy experts: e2m1 codes drawn uniformly have an RMS of about 2.9, so
# 2^(120 - 127) brings the weights near the std 0.02 of the other dummy weights.
DUMMY_SCALE = 120


@dataclass(frozen=True)
class Mxfp4(WeightFormat):
    name = "mxfp4"
    quantized = True
    architectures = ("GptOssForCausalLM",)

    def covers(self, module: str) -> bool:
        return ".mlp.experts" in module

    def allocate(self, rows: int, cols: int, experts: int | None = None) -> tuple[nn.Parameter, nn.Parameter]:
        if experts is None:
            raise ValueError("MXFP4 holds expert weights only")
        if rows % GROUP or cols % GROUP:
            raise ValueError(f"MXFP4 experts need hidden and per-rank intermediate sizes divisible by {GROUP} (one "
                             f"scale per {GROUP} values), got {rows} x {cols}: use fewer ranks or dequantize_experts")
        groups = cols // GROUP
        return (nn.Parameter(torch.empty(experts, rows, groups, 16, dtype=torch.uint8), requires_grad=False),
                nn.Parameter(torch.empty(experts, rows, groups, dtype=torch.uint8), requires_grad=False))

    def dummy_(self, weight: torch.Tensor, scales: torch.Tensor | None, gen: torch.Generator) -> None:
        weight.random_(0, 256, generator=gen)
        scales.fill_(DUMMY_SCALE)

    def dequantize(self, weight: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        return torch_ops.dequantize_mxfp4(weight, scales, dtype)

    def post_load(self, ops: ModuleType, weight: nn.Parameter, scales: nn.Parameter | None
                  ) -> tuple[nn.Parameter, nn.Parameter | None]:
        """The Triton MoE (kernels.moe_mxfp4) reads the experts in a layout of its own
        (kernels.mxfp4_layout): re-laid out once here, expert by expert so the transient copy stays
        small. The torch reference keeps the release's layout."""
        if ops is torch_ops:
            return weight, scales
        from laminar_kernels.mxfp4_layout import to_kernel_layout

        pairs = [to_kernel_layout(b, s) for b, s in zip(weight, scales)]
        return (nn.Parameter(torch.stack([v for v, _ in pairs]), requires_grad=False),
                nn.Parameter(torch.stack([s for _, s in pairs]), requires_grad=False))

    def expert_scratch_bytes(self, experts: int, hidden: int, inter: int, tokens: int, top_k: int,
                             dtype: torch.dtype) -> int:
        """Prefill-sized steps write every expert out in 16 bits for the 16-bit kernel
        (kernels.moe_mxfp4.DEQUANT_ROWS_PER_EXPERT): 3 H I weights an expert."""
        from laminar_kernels.moe_mxfp4 import DEQUANT_ROWS_PER_EXPERT

        if tokens * top_k < DEQUANT_ROWS_PER_EXPERT * experts:
            return 0
        return experts * 3 * hidden * inter * dtype.itemsize


def from_config(qcfg: dict) -> tuple[Mxfp4, list[str]]:
    """The release's config names only the method and the modules left in bf16."""
    return Mxfp4(), qcfg.get("modules_to_not_convert") or []

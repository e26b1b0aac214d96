"""The weight format every layer starts from: plain weights in the model dtype (bf16 / fp16 / fp32).

A WeightFormat says how one linear layer (or one stack of experts) holds its weights and what
follows from that; quantized formats (laminar.formats.mxfp4, laminar.formats.fp8) override the
parts that differ. Weights are [..., N, K] (out, in) as F.linear takes them; a quantized format
keeps its scales in a second parameter named after the weight plus "_scales".
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

Index = tuple  # an index into a tensor's leading dimensions (slices or ints), as Placement holds


@dataclass(frozen=True)
class WeightFormat:
    """Unquantized weights; the base of every format (see the module docstring). Formats are values:
    equal when of one kind with equal fields (what fused projections compare)."""

    name = "unquantized"
    quantized = False
    architectures = ()  # (class attribute, not a field) where a quantized format's checkpoint layout is understood

    def covers(self, module: str) -> bool:
        """Whether this format can hold the checkpoint module's weights (MXFP4: experts only)."""
        return True

    def allocate(self, rows: int, cols: int, experts: int | None = None) -> tuple[nn.Parameter, nn.Parameter | None]:
        """(weight [experts?, rows, cols], its scales or None), on the current default device and dtype."""
        lead = () if experts is None else (experts,)
        return nn.Parameter(torch.empty(*lead, rows, cols)), None

    def check_cuts(self, name: str, rows: tuple[int, ...], cols: tuple[int, ...]) -> None:
        """Refuses a weight cut (into fused parts or tensor-parallel shards) where its scales cannot follow:
        `rows` / `cols` are the sizes of the pieces along each dimension."""

    def scale_name(self, weight: str) -> str | None:
        """The checkpoint name of the scales of the checkpoint weight `weight` (None: no scales)."""
        return None

    def weight_of_scale(self, name: str) -> str | None:
        """The inverse of scale_name: the weight whose scales `name` holds, or None."""
        return None

    def scale_index(self, index: Index, ndim: int) -> Index:
        """The part of the scales that belongs to weight[index] (a tensor of `ndim` dimensions)."""
        raise NotImplementedError(f"{self.name} weights have no scales")

    def dummy_(self, weight: torch.Tensor, scales: torch.Tensor | None, gen: torch.Generator) -> None:
        """Random values of the std the other dummy weights have (0.02), as vLLM's load_format=dummy."""
        weight.normal_(0.0, 0.02, generator=gen)

    def dequantize(self, weight: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        return weight.to(dtype)

    def linear(self, ops: ModuleType, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """x @ weight.T + bias, by the kernel for this format on `ops`' device (here: torch's own GEMM)."""
        return F.linear(x, weight, bias)

    def post_load(self, ops: ModuleType, weight: nn.Parameter, scales: nn.Parameter | None
                  ) -> tuple[nn.Parameter, nn.Parameter | None]:
        """Runs once after loading (and after dequantize_experts); returns the tensors the layer keeps.
        A format whose kernel wants another layout than the checkpoint's re-lays them out here."""
        return weight, scales

    def expert_scratch_bytes(self, experts: int, hidden: int, inter: int, tokens: int, top_k: int,
                             dtype: torch.dtype) -> int:
        """Bytes the fused MoE may allocate for a step of `tokens` beyond its activations (none here)."""
        return 0

    def nbytes(self, weight: torch.Tensor, scales: torch.Tensor | None) -> int:
        """Bytes these tensors hold: what reading the weights costs (expert-traffic accounting)."""
        return sum(t.numel() * t.element_size() for t in (weight, scales) if t is not None)


UNQUANTIZED = WeightFormat()


def matches(module: str, patterns: tuple[str, ...]) -> bool:
    """Whether a checkpoint module is named by a quantization config's ignore list.

    Entries are module names (a module also covers its children), shell patterns
    ("model.layers.*.self_attn") or compressed-tensors' "re:" regular expressions.
    """
    for p in patterns:
        if p.startswith("re:"):
            if re.match(p[3:], module):
                return True
        elif fnmatch.fnmatchcase(module, p) or fnmatch.fnmatchcase(module, p + ".*"):
            return True
    return False

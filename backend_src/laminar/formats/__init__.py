"""Weight formats and the quantization_config of config.json that chooses them.

A WeightFormat (laminar.formats.base) owns everything that depends on how a linear layer's weights
are stored: parameter allocation, where a checkpoint's scales go under tensor parallelism, dummy
values, the torch reference (dequantize, then the op) and the kernel choice, the expert-bytes
accounting and a post-load hook. Quantization reads `quantization_config` and says which format
each checkpoint module is in. Adding a format: one module here (its WeightFormat and a
from_config) plus its kernel, and its quant_method below. The fused MoE picks its tuning table
from the expert weights it is given (kernels.moe_config), so formats need not tell it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from laminar.formats import fp8, mxfp4
from laminar.formats.base import UNQUANTIZED, WeightFormat, matches

QUANT_METHODS: dict[str, Callable[[dict], tuple[WeightFormat, list[str]]]] = {
    "mxfp4": mxfp4.from_config,
    "fp8": fp8.block_from_config,
    "compressed-tensors": fp8.compressed_tensors_from_config,
}


@dataclass(frozen=True)
class Quantization:
    """The checkpoint's quantized format and the modules it leaves unquantized (none without a config)."""

    method: str = "none"
    fmt: WeightFormat = UNQUANTIZED
    ignore: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, qcfg: dict | None, architecture: str) -> "Quantization":
        """Refuses what it cannot serve exactly, naming it: a checkpoint never loads into wrong weights."""
        if not qcfg:
            return cls()
        method = qcfg.get("quant_method")
        parse = QUANT_METHODS.get(method)
        if parse is None:
            raise ValueError(f"quantization {method!r} is not supported (supported: {', '.join(QUANT_METHODS)})")
        fmt, ignore = parse(qcfg)
        if architecture not in fmt.architectures:
            raise ValueError(f"quantization {method!r} is not supported for {architecture} "
                             f"(only for {', '.join(fmt.architectures)})")
        return cls(method, fmt, tuple(ignore))

    def format_of(self, *modules: str) -> WeightFormat:
        """The format of the weight fused from these checkpoint modules (q/k/v -> qkv); they must agree."""
        picked = {self.fmt if self.fmt.covers(m) and not matches(m, self.ignore) else UNQUANTIZED for m in modules}
        if len(picked) > 1:
            raise ValueError(f"quantization_config ({self.method}) quantizes some of {', '.join(modules)} but not "
                             "all: they are fused into one weight")
        return picked.pop()


__all__ = ["QUANT_METHODS", "UNQUANTIZED", "Quantization", "WeightFormat"]

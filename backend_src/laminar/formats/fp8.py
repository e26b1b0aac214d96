"""FP8 weights (float8_e4m3fn) with float32 scales: block-quantized or per output channel.

Two checkpoint conventions store them:
- `quant_method: "fp8"` with `weight_block_size: [bn, bk]` (Qwen3-*-FP8, DeepSeek): one
  `weight_scale_inv` per bn x bk block, [ceil(N/bn), ceil(K/bk)];
- `quant_method: "compressed-tensors"` (llm-compressor's FP8 / FP8-dynamic): `weight_scale` per
  output channel [N, 1] (or per block, strategy "block"), activations quantized per token at run time.
Both quantize the attention projections, the dense MLP and every expert, except the modules the
config's ignore list names. The torch reference dequantizes and multiplies in the activations' dtype;
on CUDA the kernels take the FP8 weights as they are (laminar_kernels.fp8_linear / fused_moe) and
quantize the activations themselves. Scales shard with their weights: a tensor-parallel cut or a
fused projection's boundary must fall on a block edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from laminar.formats.base import Index, WeightFormat
from laminar.ops import torch_ops

ARCHITECTURES = ("Qwen3MoeForCausalLM", "Qwen3ForCausalLM")
KERNEL_BLOCK = (128, 128)  # the block scales the FP8 kernels index (kernels.fp8: 128-wide groups)
# Dummy weights: gaussian codes of this std (a 128 x 128 block's absmax is ~4.5 sigma, which the
# real scales map to 448) and a scale that brings them to the std 0.02 of the other dummy weights.
DUMMY_CODE_STD = 100.0


@dataclass(frozen=True)
class Fp8(WeightFormat):
    block: tuple[int, int] | None  # (bn, bk); None: one scale per output channel
    scale_suffix: str  # the scale tensor's name beside `weight`: weight_scale_inv or weight_scale

    quantized = True
    architectures = ARCHITECTURES

    @property
    def name(self) -> str:
        return f"fp8-block{self.block[0]}x{self.block[1]}" if self.block else "fp8-channel"

    def allocate(self, rows: int, cols: int, experts: int | None = None) -> tuple[nn.Parameter, nn.Parameter]:
        lead = () if experts is None else (experts,)
        grid = (-(-rows // self.block[0]), -(-cols // self.block[1])) if self.block else (rows, 1)
        return (nn.Parameter(torch.empty(*lead, rows, cols, dtype=torch.float8_e4m3fn), requires_grad=False),
                nn.Parameter(torch.empty(*lead, *grid, dtype=torch.float32), requires_grad=False))

    def check_cuts(self, name: str, rows: tuple[int, ...], cols: tuple[int, ...]) -> None:
        """Block scales follow a cut only on a block edge (per-channel scales follow any row cut)."""
        if self.block is None:
            return
        for sizes, block, what in ((rows, self.block[0], "rows"), (cols, self.block[1], "columns")):
            for size in sizes:
                if size % block:
                    raise ValueError(f"FP8 {name}: pieces of {size} {what} (fused projections or tensor-parallel "
                                     f"shards) are not whole {block}-wide scale blocks: use fewer ranks")

    def scale_name(self, weight: str) -> str | None:
        return weight.removesuffix("weight") + self.scale_suffix if weight.endswith(".weight") else None

    def weight_of_scale(self, name: str) -> str | None:
        return name.removesuffix(self.scale_suffix) + "weight" if name.endswith("." + self.scale_suffix) else None

    def scale_index(self, index: Index, ndim: int) -> Index:
        """Row / column slices of the weight become slices of the block grid (they must start on a block
        edge); per-channel scales keep the rows and have one column."""
        out = list(index)
        for dim, size in ((ndim - 2, self.block[0] if self.block else 1), (ndim - 1, self.block[1] if self.block else None)):
            if 0 <= dim < len(out):
                out[dim] = _grid_slice(out[dim], size)
        return tuple(out)

    def dummy_(self, weight: torch.Tensor, scales: torch.Tensor | None, gen: torch.Generator) -> None:
        for w in weight.view(-1, *weight.shape[-2:]):  # one matrix at a time: the fp32 draw stays small
            codes = torch.randn(w.shape, generator=gen, device=w.device, dtype=torch.float32) * DUMMY_CODE_STD
            w.copy_(codes.clamp_(-torch_ops.FP8_MAX, torch_ops.FP8_MAX))
        scales.fill_(0.02 / DUMMY_CODE_STD)

    def dequantize(self, weight: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        return torch_ops.dequantize_fp8(weight, scales, dtype)

    def linear(self, ops: ModuleType, x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        if ops is torch_ops:
            return F.linear(x, self.dequantize(weight, scales, x.dtype), bias)
        y = ops.fp8_linear(x, weight, scales)
        return y if bias is None else y + bias

    def post_load(self, ops: ModuleType, weight: nn.Parameter, scales: nn.Parameter | None
                  ) -> tuple[nn.Parameter, nn.Parameter | None]:
        """Refuses, before the first step, block scales the kernels cannot read (the reference reads any)."""
        if ops is not torch_ops and self.block not in (None, KERNEL_BLOCK):
            raise ValueError(f"FP8 scale blocks of {self.block[0]}x{self.block[1]}: the FP8 kernels read "
                             f"{KERNEL_BLOCK[0]}x{KERNEL_BLOCK[1]} blocks or per-channel scales (LAMINAR_OPS=torch "
                             "runs the reference)")
        return weight, scales


def _grid_slice(s, block: int | None):
    """A weight slice along one dimension -> the slice of its scales (block None: the one column)."""
    if block is None:
        return slice(None)
    if block == 1 or s == slice(None):
        return s
    if not isinstance(s, slice) or s.step not in (None, 1) or (s.start or 0) % block:
        raise ValueError(f"an FP8 weight is split at {s} (tensor parallelism or a fused projection), off its "
                         f"{block}-wide scale blocks: use fewer ranks")
    return slice((s.start or 0) // block, None if s.stop is None else -(-s.stop // block))


def block_from_config(qcfg: dict) -> tuple[Fp8, list[str]]:
    """`quant_method: "fp8"`: block scales in `weight_scale_inv`, activations quantized at run time."""
    scheme, fmt, block = qcfg.get("activation_scheme", "dynamic"), qcfg.get("fmt", "e4m3"), qcfg.get("weight_block_size")
    if scheme != "dynamic":
        raise ValueError(f"quantization 'fp8' with activation_scheme {scheme!r} is not supported (dynamic only)")
    if fmt != "e4m3":
        raise ValueError(f"quantization 'fp8' with fmt {fmt!r} is not supported (e4m3 only)")
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ValueError(f"quantization 'fp8' with weight_block_size {block!r} is not supported (per-tensor scales; "
                         "[bn, bk] blocks only)")
    return Fp8(tuple(block), "weight_scale_inv"), qcfg.get("modules_to_not_convert") or qcfg.get("ignored_layers") or []


def compressed_tensors_from_config(qcfg: dict) -> tuple[Fp8, list[str]]:
    """`quant_method: "compressed-tensors"` with one FP8 config group over every Linear: weights per channel
    (or per block) in `weight_scale`; activations unquantized or quantized dynamically."""
    def refuse(what: str) -> ValueError:
        return ValueError(f"quantization 'compressed-tensors' with {what} is not supported (FP8 weights per "
                          "channel or block, activations dynamic or none)")

    groups = qcfg.get("config_groups") or {}
    if len(groups) != 1:
        raise refuse(f"{len(groups)} config groups")
    (name, group), = groups.items()
    fmt = group.get("format") or qcfg.get("format")
    if fmt not in (None, "float-quantized"):
        raise refuse(f"format {fmt!r}")
    if group.get("targets") != ["Linear"]:
        raise refuse(f"{name} targets {group.get('targets')!r}")
    w = group.get("weights") or {}
    if (w.get("type"), w.get("num_bits"), w.get("symmetric", True), w.get("dynamic", False)) != ("float", 8, True, False):
        raise refuse(f"{name} weights {w!r}")
    if w.get("strategy") == "channel":
        block = None
    elif w.get("strategy") == "block" and len(w.get("block_structure") or ()) == 2:
        block = tuple(w["block_structure"])
    else:
        raise refuse(f"weight strategy {w.get('strategy')!r}")
    act = group.get("input_activations")
    if act is not None and (act.get("type"), act.get("num_bits"), act.get("dynamic")) != ("float", 8, True):
        raise refuse(f"{name} input_activations {act!r}")
    if group.get("output_activations") is not None:
        raise refuse(f"{name} output_activations")
    if qcfg.get("kv_cache_scheme") is not None:
        raise refuse(f"kv_cache_scheme {qcfg['kv_cache_scheme']!r}")
    return Fp8(block, "weight_scale"), qcfg.get("ignore") or []

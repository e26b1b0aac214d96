"""Fills a model's parameters from HF safetensors, or with random values of the real shapes.

Each model maps checkpoint names onto its own layout (`model.placements(name)`, see
laminar.models.placements); under tensor parallelism each rank reads only its shard of every
tensor (safetensors slices lazily), following the model's ShardLayout. Quantized weights bring
their scales (laminar.formats): a scale tensor goes where its weight goes, cut along the scale grid,
from whichever shard holds it; an FP8 tensor without scales, or one the config does not quantize,
is refused by name.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch
from safetensors import safe_open

from laminar.models import CausalLM
from laminar.models.placements import Placement, vocab_rows

_REPLICATED = ("norm", "layernorm", "mlp.gate", "mlp.gate_bias")  # identical on every rank (the router included)
_CODES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.uint8)  # quantized values: never converted on copy


def load_dummy(model: CausalLM, seed: int) -> None:
    """Random weights (std 0.02; norms at 1), as vLLM's load_format=dummy, for benchmarks at real shapes.

    Each tensor draws from its own stream, named after it, so that a layer gets the same values
    whichever pipeline stage holds it; shards from a per-TP-rank stream, replicated tensors (the
    router) from one shared by the ranks, so that every rank routes tokens to the same experts.
    Linear weights draw as their format says (quantized ones: codes of the real shapes and
    plausible scales).
    """
    device = model.norm.device
    formats = model.weight_formats()
    params = dict(model.named_parameters())

    def stream(name: str, shared: bool) -> torch.Generator:
        key = f"{seed}:{name}:{'shared' if shared else model.tp.rank}"
        return torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))

    with torch.no_grad():
        for name, param in params.items():
            if name in formats:
                formats[name].dummy_(param, params.get(name + "_scales"), stream(name, False))
            elif name.endswith("_scales") and name.removesuffix("_scales") in formats:
                continue  # drawn with their weight
            elif name.endswith(("norm", "layernorm")):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=stream(name, name.endswith(_REPLICATED)))


def load_safetensors(model: CausalLM, model_dir: str | Path) -> None:
    """Copies this rank's part of every checkpoint tensor into place; fails if any parameter stays unset."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"model: no *.safetensors files in {model_dir!s}")
    _check_scales(model, _dtypes(files))
    params = dict(model.named_parameters())
    filled: dict[str, int] = {}
    vocab_params = [n for n in ("embed_tokens", "lm_head") if n in params and params[n].numel()]
    with torch.no_grad():
        for n in vocab_params:
            params[n].zero_()  # the last rank's vocabulary padding rows stay zero
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    for place in _placements(model, f, name, params):
                        filled[place.param] = filled.get(place.param, 0) + _copy(f, name, place, params)
    expected = {n: p.numel() for n, p in params.items()}
    rows = vocab_rows(model)
    for n in vocab_params:
        expected[n] = (rows.stop - rows.start) * model.cfg.hidden_size
    missing = [n for n in params if filled.get(n, 0) != expected[n]]
    if missing:
        raise ValueError(f"checkpoint in {model_dir!s} does not set: {', '.join(missing[:8])}")


def _dtypes(files: list[Path]) -> dict[str, str]:
    """Every checkpoint tensor's safetensors dtype ("BF16", "F8_E4M3", ...), over all shards."""
    out = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            out.update((name, f.get_slice(name).get_dtype()) for name in f.keys())
    return out


def _check_scales(model: CausalLM, dtypes: dict[str, str]) -> None:
    """Every FP8 tensor comes with its scales (in any shard), under the config's quantization."""
    quant = model.cfg.quantization
    for name, dtype in dtypes.items():
        if not dtype.startswith("F8"):
            continue
        scale = quant.fmt.scale_name(name)
        if scale is None:
            raise ValueError(f"checkpoint tensor {name} is FP8 ({dtype}), but config.json's quantization_config "
                             f"({quant.method}) describes no FP8 weights")
        if scale not in dtypes:
            raise ValueError(f"checkpoint tensor {name} is FP8 but its scales {scale} are in no *.safetensors file")


def _placements(model: CausalLM, f, name: str, params: dict[str, torch.Tensor]) -> list[Placement]:
    """The model's placements of a tensor; a scale tensor goes where its weight goes, cut along its grid."""
    fmt = model.cfg.quantization.fmt
    weight = fmt.weight_of_scale(name)
    if weight is None:
        return model.placements(name)
    ndim = len(f.get_slice(name).get_shape())
    out = []
    for place in model.placements(weight):
        scales = place.param + "_scales"
        if scales not in params:
            raise ValueError(f"checkpoint tensor {name} holds scales of {weight}, which config.json's "
                             f"quantization_config ({model.cfg.quantization.method}) leaves unquantized")
        out.append(Placement(scales, fmt.scale_index(place.dest, params[scales].ndim), fmt.scale_index(place.src, ndim)))
    return out


def _copy(f, name: str, place: Placement, params: dict[str, torch.Tensor]) -> int:
    """Reads this rank's part of one tensor into its place; returns how many values it set."""
    dest = params[place.param][place.dest]
    tensor = f.get_slice(name)[place.src] if place.src else f.get_tensor(name)
    if place.transform is not None:
        tensor = place.transform(tensor)
    if (tensor.dtype in _CODES or dest.dtype in _CODES) and tensor.dtype != dest.dtype:
        raise ValueError(f"checkpoint tensor {name} is {tensor.dtype}, but config.json's quantization_config "
                         f"makes {place.param} {dest.dtype}")
    if tensor.shape != dest.shape:
        raise ValueError(f"checkpoint tensor {name} gives shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
    dest.copy_(tensor)
    return dest.numel()

"""Fills a model's parameters from HF safetensors, or with random values of the real shapes.

Each model maps checkpoint names onto its own layout (`model.placements(name)`, see
laminar.models.placements); under tensor parallelism each rank reads only its shard of every
tensor (safetensors slices lazily), following the model's ShardLayout.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from laminar.models import CausalLM
from laminar.models.placements import Placement, vocab_rows

_REPLICATED = ("norm", "layernorm", "mlp.gate", "mlp.gate_bias")  # identical on every rank (the router included)
# MXFP4 exponent of the dummy experts: e2m1 codes drawn uniformly have an RMS of about 2.9, so
# 2^(120 - 127) brings the weights near the std 0.02 of the other dummy weights.
DUMMY_MXFP4_SCALE = 120


def load_dummy(model: CausalLM, seed: int) -> None:
    """Random weights (std 0.02; norms at 1), as vLLM's load_format=dummy, for benchmarks at real shapes.

    Shards draw from a per-rank stream; replicated tensors (the router) from a shared one,
    so that every rank routes tokens to the same experts. MXFP4 experts get random codes.
    """
    device = model.embed_tokens.device
    shared = torch.Generator(device=device).manual_seed(seed)
    own = torch.Generator(device=device).manual_seed(seed + 1 + model.tp.rank)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm", "layernorm")):
                param.fill_(1.0)
            elif name.endswith("_scales"):
                param.fill_(DUMMY_MXFP4_SCALE)
            elif param.dtype == torch.uint8:
                param.random_(0, 256, generator=own)
            else:
                param.normal_(0.0, 0.02, generator=shared if name.endswith(_REPLICATED) else own)


def load_safetensors(model: CausalLM, model_dir: str | Path) -> None:
    """Copies this rank's part of every checkpoint tensor into place; fails if any parameter stays unset."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"model: no *.safetensors files in {model_dir!s}")
    params = dict(model.named_parameters())
    filled: dict[str, int] = {}
    vocab_params = [n for n in ("embed_tokens", "lm_head") if n in params]
    with torch.no_grad():
        for n in vocab_params:
            params[n].zero_()  # the last rank's vocabulary padding rows stay zero
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    for place in model.placements(name):
                        filled[place.param] = filled.get(place.param, 0) + _copy(f, name, place, params)
    expected = {n: p.numel() for n, p in params.items()}
    rows = vocab_rows(model)
    for n in vocab_params:
        expected[n] = (rows.stop - rows.start) * model.cfg.hidden_size
    missing = [n for n in params if filled.get(n, 0) != expected[n]]
    if missing:
        raise ValueError(f"checkpoint in {model_dir!s} does not set: {', '.join(missing[:8])}")


def _copy(f, name: str, place: Placement, params: dict[str, torch.Tensor]) -> int:
    """Reads this rank's part of one tensor into its place; returns how many values it set."""
    dest = params[place.param][place.dest]
    tensor = f.get_slice(name)[place.src] if place.src else f.get_tensor(name)
    if place.transform is not None:
        tensor = place.transform(tensor)
    if tensor.shape != dest.shape:
        raise ValueError(f"checkpoint tensor {name} gives shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}")
    dest.copy_(tensor)
    return dest.numel()

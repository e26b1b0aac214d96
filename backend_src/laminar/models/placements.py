"""Where one rank's part of a checkpoint tensor goes: the vocabulary-sharded and replicated tensors every model has.

A Placement names our parameter, the index into it, the index into the checkpoint tensor
(read lazily through safetensors, so each rank reads only its shard) and an optional
transform of what was read (GPT-OSS stores its dense experts transposed).
"""
from __future__ import annotations

import re
from typing import Callable, NamedTuple

import torch

ALL = slice(None)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class Placement(NamedTuple):
    param: str
    dest: tuple
    src: tuple
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def part(index: int, size: int) -> slice:
    return slice(index * size, (index + 1) * size)


def vocab_rows(model) -> slice:
    """The vocabulary rows this rank holds (the last rank's range may be short)."""
    layout, vocab = model.layout, model.cfg.vocab_size
    start = min(layout.vocab_start, vocab)
    return slice(start, min(start + layout.vocab_per_rank, vocab))


def placements(model, name: str, replicated: dict[str, str],
               in_layer: Callable[[object, str, str], list[Placement]]) -> list[Placement]:
    """Where this rank's part of one checkpoint tensor goes; [] for tensors the rank does not use.

    The embedding, LM head, final norm and the layers' `replicated` tensors (checkpoint name
    after `model.layers.N.` -> ours after `layers.N.`) are placed here, the rest of a layer's
    tensors by in_layer(model, "layers.N.", name after "model.layers.N.").
    """
    outer = _outer_placements(model, name)
    if outer is not None:
        return outer
    m = _LAYER.match(name)
    if not m or int(m.group(1)) not in model.layer_range:  # not a layer, or another pipeline stage's
        return []
    prefix, rest = f"layers.{m.group(1)}.", m.group(2)
    if rest in replicated:
        return [Placement(prefix + replicated[rest], (), ())]
    return in_layer(model, prefix, rest)


def _outer_placements(model, name: str) -> list[Placement] | None:
    """Embedding, LM head and final norm; None for a name inside the layers."""
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        pname = "embed_tokens" if name.startswith("model.") else "lm_head"
        held = getattr(model, pname)
        if held is None or held.shape[0] == 0:  # tied, or another pipeline stage's
            return []
        rows = vocab_rows(model)
        return [Placement(pname, (slice(0, rows.stop - rows.start),), (rows,))]
    if name == "model.norm.weight":
        return [Placement("norm", (), ())]
    return None


def qkv_rows(model) -> dict[str, tuple[slice, slice]]:
    """q/k/v projection -> (rows of our fused qkv, this rank's rows of the checkpoint's projection)."""
    cfg, layout, rank = model.cfg, model.layout, model.tp.rank
    q, kv = layout.num_heads * cfg.head_dim, layout.num_kv_heads * cfg.head_dim
    q_rows, kv_rows = part(rank, q), part(layout.kv_part, kv)
    return {"q_proj": (slice(0, q), q_rows), "k_proj": (slice(q, q + kv), kv_rows),
            "v_proj": (slice(q + kv, q + 2 * kv), kv_rows)}

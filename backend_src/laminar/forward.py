"""The forward pass of one step over any decoder that follows the layer protocol below.

Decode rows cross every layer; each prefill segment's rows join them for its span. Stretch by
stretch the rows are gathered, run through the stretch's layers by one of three layer runners
(eager, decode-only CUDA graphs, mixed CUDA graphs around eager attention: all share
`fits` / `run`), and split back. What a model provides:
  embed(ids) -> hidden;  layers[i](hidden, residual, positions, kv_cache, meta, expert_hits);
  layers[i].before_attention / self_attn.attend / after_attention (the halves mixed graphs replay);
  logits(hidden, residual) -> [rows, V] fp32.
Under pipeline parallelism the forward runs one stage's layers (batch.layers): its rows enter
from the previous stage (`incoming`) or on this stage, and those that reach the stage's end
leave as `outgoing` (laminar.pipeline).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from laminar.forward_batch import Carry, ForwardBatch, SegmentRows
from laminar.ops import AttentionMetadata
from laminar.step_plan import stacked

State = tuple[torch.Tensor, torch.Tensor]  # (hidden, residual); their sum is the residual stream


@dataclass
class ForwardResult:
    logits: torch.Tensor | None       # [len(logits_rows), V] fp32
    carry: Carry                      # batch id -> its rows after its span, for segments that continue here
    outgoing: list[State] = field(default_factory=list)  # to the next stage: decodes, then batch.sent
    experts_touched: torch.Tensor | None = None  # [1] int64: distinct experts hit, summed over the MoE layers run


class LayerRunner(Protocol):
    def fits(self, rows: int) -> bool: ...

    def run(self, layers: range, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> State: ...


class EagerLayers:
    """Runs layers op by op: any row count, any batch."""

    def __init__(self, model: nn.Module, kv_caches: dict[int, State], expert_hits: torch.Tensor) -> None:
        self.model, self.kv_caches, self.expert_hits = model, kv_caches, expert_hits

    def fits(self, rows: int) -> bool:
        return True

    def run(self, layers: range, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> State:
        for i in layers:
            hidden, residual = self.model.layers[i](hidden, residual, positions, self.kv_caches[i], meta,
                                                    self.expert_hits)
        return hidden, residual


@dataclass
class LayerRunners:
    """Graphs where they fit (decode-only stretches, mixed stretches), eager otherwise."""

    eager: EagerLayers
    decode: LayerRunner | None = None
    mixed: LayerRunner | None = None

    def pick(self, mixed: bool, rows: int) -> LayerRunner:
        graphs = self.mixed if mixed else self.decode
        return graphs if graphs is not None and graphs.fits(rows) else self.eager


def forward(model: nn.Module, batch: ForwardBatch, runners: LayerRunners, num_layers: int,
            incoming: list[State] | None = None) -> ForwardResult:
    """Every rank: the step's forward over its stage's layers; returns the logits rows (last stage),
    the rows of continuing segments this stage keeps, and the rows leaving for the next stage.
    incoming: the previous stage's parts (decodes, then batch.received); None on the first stage."""
    num_decode = batch.decode_ids.shape[0]
    decode = _embedded(model, batch.decode_ids) if incoming is None else incoming[0]
    states = dict(zip(batch.received, incoming[1:])) if incoming is not None else {}
    states.update((i, _segment_state(model, seg)) for i, seg in enumerate(batch.segments) if seg.held)
    for stretch in batch.stretches:
        hidden, residual = _joined(stacked(decode, [states[i] for i in stretch.segments]))
        runner = runners.pick(bool(stretch.segments), hidden.shape[0])
        hidden, residual = runner.run(stretch.layers, hidden, residual, stretch.positions, stretch.meta)
        sizes = stacked(num_decode, [batch.segments[i].num_rows for i in stretch.segments])
        parts = list(zip(hidden.split(sizes), residual.split(sizes)))
        decode = parts[0]
        for i, part in zip(stretch.segments, parts[1:]):
            states[i] = part
    segments, stop = batch.segments, batch.layers.stop
    carry = {segments[i].batch_id: state for i, state in states.items() if segments[i].layers.stop < stop}
    if stop < num_layers:
        return ForwardResult(None, carry, stacked(decode, [states[i] for i in batch.sent]))
    if batch.logits_rows.numel() == 0:
        return ForwardResult(None, carry)
    finishing = [states[i] for i, seg in enumerate(segments) if seg.layers.stop == num_layers]
    hidden, residual = _joined(stacked(decode, finishing))
    rows = batch.logits_rows
    return ForwardResult(model.logits(hidden[rows], residual[rows]), carry)


def _embedded(model: nn.Module, ids: torch.Tensor) -> State:
    hidden = model.embed(ids)
    return hidden, torch.zeros_like(hidden)


def _segment_state(model: nn.Module, seg: SegmentRows) -> State:
    if seg.ids is not None:
        return _embedded(model, seg.ids)
    return seg.hidden, seg.residual


def _joined(parts: list[State]) -> State:
    """The parts' rows in order (no copy when there is one part)."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([h for h, _ in parts]), torch.cat([r for _, r in parts])

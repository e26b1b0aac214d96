"""Device tensors of one step, built identically on every rank from the step's plain integers.

A step runs decode rows through every layer and each prefill segment's rows through its span
(see step_plan). The stack is cut into stretches of layers whose set of rows is constant;
each stretch carries its rows' positions and attention metadata. A segment's rows enter as
token ids when its span starts at layer 0, else as the hidden state and residual it left the
previous iteration with (kept on the device by the model runner, keyed by batch id).

Under pipeline parallelism each stage builds the step for its own layers (laminar.pipeline): a
segment's rows enter where its span starts (token ids on stage 0, else the carry of the stage
holding that layer), or arrive from the previous stage with the decode rows when its span started
on an earlier stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from laminar.host_copy import list_to_device, to_device
from laminar.ops import AttentionMetadata
from laminar.step_inputs import SegmentInputs, StepInputs
from laminar.step_plan import stacked, stretches

Carry = dict[int, tuple[torch.Tensor, torch.Tensor]]  # batch id -> (hidden, residual) between iterations


@dataclass
class SegmentRows:
    """One prefill segment's rows: token ids when its span starts at layer 0, else the carried state;
    neither when its span starts on another pipeline stage."""

    batch_id: int
    layers: range
    num_rows: int
    ids: torch.Tensor | None
    hidden: torch.Tensor | None       # [rows, H] carried from the previous iteration
    residual: torch.Tensor | None

    @property
    def held(self) -> bool:
        """Its rows enter on this stage (token ids or this stage's carry)."""
        return self.ids is not None or self.hidden is not None


@dataclass
class Stretch:
    """Consecutive layers that run the same rows: the decodes plus the segments listed."""

    layers: range
    segments: tuple[int, ...]         # indices into ForwardBatch.segments; empty: decode rows only
    positions: torch.Tensor           # [rows], decode rows first
    meta: AttentionMetadata


@dataclass
class ForwardBatch:
    """The tensors of one iteration on one pipeline stage (all layers without pipeline parallelism).
    In every stretch decode rows come first, segment rows after them (step_plan.stacked)."""

    decode_ids: torch.Tensor          # [Td] the last token of each decoding sequence (used on stage 0)
    segments: list[SegmentRows]       # every segment of the step, in plan order
    stretches: list[Stretch]          # this stage's; stretches with no rows (no decodes, no segment) are left out
    logits_rows: torch.Tensor         # rows of the last layer's output (decodes, then finishing segments)
    layers: range                     # this stage's layers
    received: list[int]               # segments whose rows come from the previous stage, after the decodes
    sent: list[int]                   # segments whose rows go on to the next stage, after the decodes

    @property
    def received_sizes(self) -> list[int]:
        """Row counts of the parts the previous stage sends: the decodes, then each received segment."""
        return stacked(self.decode_ids.shape[0], [self.segments[i].num_rows for i in self.received])


def build_batch(inputs: StepInputs, num_layers: int, block_size: int, carry: Carry, device: torch.device,
                layers: range | None = None, sampled: torch.Tensor | None = None) -> ForwardBatch:
    """The step's device tensors for these layers (default: all); carried segments take their rows
    from `carry`, pending tokens theirs from `sampled` (the previous step's sampled tokens, on the
    device). Every copy is queued behind the device's work: nothing here waits for the step in flight."""
    layers = range(num_layers) if layers is None else layers
    nd = inputs.num_decode
    ids = _token_ids(inputs.token_ids, sampled, device, embedded=layers.start == 0)
    entries, first, segments = nd, nd, []
    for seg in inputs.segments:
        rows = sum(inputs.q_lens[entries: entries + seg.num_entries])
        if seg.layers.start not in layers:
            segments.append(SegmentRows(seg.batch_id, seg.layers, rows, None, None, None))
        else:
            segments.append(_segment_rows(seg, rows, ids[first: first + rows] if seg.first else None, carry, device))
        first += rows if seg.first else 0
        entries += seg.num_entries
    return ForwardBatch(
        decode_ids=ids[:nd],
        segments=segments,
        stretches=_stretches(inputs, num_layers, block_size, device, layers),
        logits_rows=list_to_device(inputs.logits_rows, torch.long, device),
        layers=layers,
        received=crossing(inputs.segments, layers.start),
        sent=crossing(inputs.segments, layers.stop) if layers.stop < num_layers else [],
    )


def crossing(segments: list[SegmentInputs], boundary: int) -> list[int]:
    """Segments whose rows reach a stage boundary this step (their span starts before it and ends
    at or after it): they pass it with the decode rows."""
    return [i for i, seg in enumerate(segments) if seg.layers.start < boundary <= seg.layers.stop]


def _token_ids(token_ids: list[int], sampled: torch.Tensor | None, device: torch.device,
               embedded: bool = True) -> torch.Tensor:
    """The ids on the device, each pending one (-1 - r) replaced by row r of `sampled`. A later
    pipeline stage (not embedded) keeps the placeholders: it only counts the rows, which arrive
    as hidden states, and never receives the sampled ids."""
    ids = list_to_device(token_ids, torch.long, device)
    if not embedded or min(token_ids, default=0) >= 0:  # min: C speed over a whole prompt's ids
        return ids
    if sampled is None:
        raise RuntimeError("a step reads pending tokens, but no step has sampled any")
    return torch.where(ids < 0, sampled[(-1 - ids).clamp_min(0)], ids)


def _segment_rows(seg: SegmentInputs, rows: int, ids: torch.Tensor | None, carry: Carry,
                  device: torch.device) -> SegmentRows:
    if ids is not None:
        return SegmentRows(seg.batch_id, seg.layers, rows, ids, None, None)
    hidden, residual = carry[seg.batch_id]
    if seg.carry_rows is not None:
        keep = list_to_device(seg.carry_rows, torch.long, device)
        hidden, residual = hidden.index_select(0, keep), residual.index_select(0, keep)
    return SegmentRows(seg.batch_id, seg.layers, rows, None, hidden, residual)


def _stretches(inputs: StepInputs, num_layers: int, block_size: int, device: torch.device,
               layers: range) -> list[Stretch]:
    """Stretches of these layers with their rows' metadata (built once per distinct set of rows)."""
    bounds, entry = [], inputs.num_decode
    for seg in inputs.segments:
        bounds.append(range(entry, entry + seg.num_entries))
        entry += seg.num_entries
    built: dict[tuple[int, ...], tuple[AttentionMetadata, torch.Tensor]] = {}
    out = []
    for span, active in stretches(num_layers, [seg.layers for seg in inputs.segments]):
        span = range(max(span.start, layers.start), min(span.stop, layers.stop))
        if not span or (not active and not inputs.num_decode):
            continue
        if active not in built:
            chosen = [e for part in stacked(range(inputs.num_decode), [bounds[j] for j in active]) for e in part]
            built[active] = metadata(inputs, chosen, block_size, device, inputs.num_decode)
        meta, positions = built[active]
        out.append(Stretch(span, active, positions, meta))
    return out


def metadata(inputs: StepInputs, entries: list[int], block_size: int, device: torch.device,
             num_decodes: int) -> tuple[AttentionMetadata, torch.Tensor]:
    """Attention metadata and positions of the rows of these entries, in order (the first
    num_decodes of them decode entries).

    Built with numpy and moved in two copies (one int32, one int64 buffer): per-op torch
    overhead on small CPU tensors would otherwise be a visible share of a decode step. Each
    part starts 16-byte aligned, as Triton compiles a kernel variant per pointer alignment.
    """
    bs, count = block_size, len(entries)
    q_lens = np.asarray([inputs.q_lens[e] for e in entries], dtype=np.int64)
    starts = np.asarray([inputs.starts[e] for e in entries], dtype=np.int64)
    seq_lens = starts + q_lens
    width = max(max((len(inputs.block_tables[e]) for e in entries), default=0), 1)
    tables = np.zeros((count, width), dtype=np.int32)
    for i, e in enumerate(entries):
        table = inputs.block_tables[e]
        tables[i, : len(table)] = table
    query_start = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(q_lens, out=query_start[1:])
    seq_index = np.repeat(np.arange(count), q_lens)
    positions = starts[seq_index] + np.arange(int(query_start[-1])) - query_start[:-1][seq_index]
    slots = tables[seq_index, positions // bs].astype(np.int64) * bs + positions % bs
    host = (query_start.astype(np.int32), seq_lens.astype(np.int32), tables)
    qsl, lens, flat_tables = _aligned_parts(device, host[0], host[1], tables.ravel())
    slot_mapping, positions_t = _aligned_parts(device, slots, positions)
    meta = AttentionMetadata(
        query_start_loc=qsl,
        seq_lens=lens,
        block_tables=flat_tables.view(count, width),
        slot_mapping=slot_mapping,
        max_query_len=int(q_lens.max()),
        max_seq_len=int(seq_lens.max()),
        host=host,
        num_decodes=num_decodes,
    )
    return meta, positions_t


def _aligned_parts(device: torch.device, *parts: np.ndarray) -> list[torch.Tensor]:
    """One host-to-device copy of same-dtype arrays: a view per part, each starting at a 16-byte boundary."""
    step = 16 // parts[0].itemsize
    offsets, size = [], 0
    for part in parts:
        offsets.append(size)
        size += -(-len(part) // step) * step
    host = np.zeros(size, dtype=parts[0].dtype)
    for part, offset in zip(parts, offsets):
        host[offset: offset + len(part)] = part
    buffer = to_device(torch.from_numpy(host), device)
    return [buffer[offset: offset + len(part)] for part, offset in zip(parts, offsets)]

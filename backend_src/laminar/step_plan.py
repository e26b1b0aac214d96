"""Layered prefill in one place: how prompt tokens travel through the layers, step by step.

Every iteration runs each decoding sequence through every layer. Prompt tokens travel in
prefill batches: a batch's chunks cross the layers in order, a contiguous span of layers per
iteration, and each prompt token crosses each layer exactly once. A step is the decode rows
plus a set of segments, each one batch with the span it crosses now; layer l runs the decode
rows and the rows of every segment whose span covers l. Chunked prefill is the case where
every span is the whole stack, layered prefill the case of partial spans: one mechanism.

This module is the data model of a step and its layer geometry, and nothing else: it imports
no policy and nothing of the GPU side, so the scheduler, the policies (laminar.policies, which
choose the segments), the cost model and the forward all read it from below.

The row order: wherever a step's rows are stacked (a stretch's input, the last layer's output,
the sampled tokens) the decode rows come first, then the segments' rows in plan order;
`stacked` is that rule and every place that lays rows out or reads them back calls it.
The logits rule: a row gets logits when it is a decode row, or the last row of a chunk that
completes its sequence's tokens in a segment that crosses the last layer now.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from laminar.sequence import Sequence

T = TypeVar("T")


def stacked(decode: T, segments: Iterable[T]) -> list[T]:
    """The row order of a step: the decode part first, then the segments' parts in plan order.

    The parts are whatever the caller stacks (row counts, hidden states, entries, sampled
    sequences); the executor's inputs, the forward's stretches and logits, the logits rule and
    the attention kernels' decode split all rely on this one order.
    """
    return [decode, *segments]


@dataclass(frozen=True)
class Chunk:
    """Prompt tokens [start, start + length) of seq, computed by one prefill batch."""

    seq: Sequence
    start: int
    length: int

    @property
    def completes(self) -> bool:
        """Whether this chunk computes the last uncomputed token, so a token is sampled after it."""
        return self.start + self.length == self.seq.num_tokens

    @property
    def self_pairs(self) -> int:
        """Causal query-key pairs within the chunk (each token sees the chunk up to itself)."""
        return self.length * (self.length + 1) // 2

    @property
    def context_pairs(self) -> int:
        """Query-key pairs between the chunk and the tokens before it."""
        return self.length * self.start


@dataclass
class PrefillBatch:
    """Prompt chunks that cross the layers together; layers [0, layers_done) are behind them.

    Between iterations their (hidden, residual) rows stay on the device, held by the model
    runner of every rank under the batch's id; carry_rows lists the rows still in the batch
    when chunks were dropped since it last ran (None: all of them). groups is the static
    policy's fixed layer groups (None: spans are chosen per iteration).
    """

    id: int
    chunks: list[Chunk]
    groups: tuple[range, ...] | None = None
    layers_done: int = 0
    carry_rows: list[int] | None = None

    def remove(self, seq: Sequence) -> None:
        """Drops seq's chunk and its carried rows (abort or preemption while the batch is in flight)."""
        if all(c.seq is not seq for c in self.chunks):
            return
        keep, offset, rows = [], 0, []
        for c in self.chunks:
            if c.seq is not seq:
                keep.append(c)
                rows.extend(range(offset, offset + c.length))
            offset += c.length
        if self.layers_done > 0:
            current = self.carry_rows if self.carry_rows is not None else range(offset)
            self.carry_rows = [current[r] for r in rows]
        self.chunks = keep


@dataclass(frozen=True)
class Segment:
    """One batch in one iteration: its chunks cross `layers` now."""

    batch_id: int
    chunks: tuple[Chunk, ...]
    layers: range
    carry_rows: tuple[int, ...] | None  # rows of the carried state still in the batch; None: all
    finishes: bool                       # the span ends at the last layer: the batch leaves the device

    @property
    def num_tokens(self) -> int:
        return sum(c.length for c in self.chunks)

    def samples(self, chunk: Chunk) -> bool:
        """The logits rule for prefill rows: a chunk's last row gets logits when the chunk completes
        its sequence's tokens and the segment crosses the last layer now."""
        return self.finishes and chunk.completes

    @property
    def sampled(self) -> list[Sequence]:
        """Sequences that get a token from this segment."""
        return [c.seq for c in self.chunks if self.samples(c)]

    def logits_rows(self, offset: int) -> list[int]:
        """Rows (from offset, where this segment's rows start in the last layer's output) that get logits."""
        ends = itertools.accumulate(c.length for c in self.chunks)
        return [offset + end - 1 for c, end in zip(self.chunks, ends) if self.samples(c)]


@dataclass(frozen=True)
class SegmentShape:
    """What the cost of one prefill segment depends on."""

    tokens: int
    self_pairs: int      # causal query-key pairs within its chunks
    context_pairs: int   # query-key pairs between its chunks and their earlier tokens
    layers: range

    @classmethod
    def of(cls, chunks: Iterable[Chunk], layers: range) -> "SegmentShape":
        chunks = list(chunks)
        return cls(sum(c.length for c in chunks), sum(c.self_pairs for c in chunks),
                   sum(c.context_pairs for c in chunks), layers)


@dataclass(frozen=True)
class StepShape:
    num_decode: int
    decode_context: int                 # context tokens summed over the decoding sequences
    segments: tuple[SegmentShape, ...]

    @classmethod
    def of(cls, decode: Iterable[Sequence], segments: Iterable[Segment]) -> "StepShape":
        decode = list(decode)
        return cls(len(decode), sum(s.num_tokens for s in decode),
                   tuple(SegmentShape.of(s.chunks, s.layers) for s in segments))


@dataclass(frozen=True)
class StepPlan:
    """What one iteration computes, frozen when scheduled: the engine and runner read only this."""

    decode: tuple[Sequence, ...]
    segments: tuple[Segment, ...]
    carried: tuple[int, ...]              # batch ids whose rows stay on the device after this step
    preempted: tuple[Sequence, ...] = ()
    predicted_s: float | None = None      # the cost model's time for this step (SLO policy)
    shape: StepShape | None = None

    @property
    def finishing(self) -> list[Segment]:
        """The segments that cross the last layer now: theirs are the prompt rows of the last layer's output."""
        return [seg for seg in self.segments if seg.finishes]

    @property
    def sample_seqs(self) -> list[Sequence]:
        """Decodes always, then the sequences whose prompts complete in a finishing segment, in row order."""
        return _flat(stacked(list(self.decode), [seg.sampled for seg in self.finishing]))

    def last_layer_segments(self) -> list[tuple[Segment, int]]:
        """The finishing segments, each with the row where it starts in the last layer's output
        (stacked: the decodes, then these segments)."""
        finishing = self.finishing
        ends = itertools.accumulate(stacked(len(self.decode), [seg.num_tokens for seg in finishing]))
        return list(zip(finishing, ends))

    def logits_rows(self) -> list[int]:
        """Rows of the last layer's output that get logits; one per sample_seqs entry, in the same order."""
        return _flat(stacked(list(range(len(self.decode))),
                             [seg.logits_rows(offset) for seg, offset in self.last_layer_segments()]))

    @property
    def is_empty(self) -> bool:
        return not self.decode and not any(seg.chunks for seg in self.segments)


def split_layers(num_layers: int, num_groups: int) -> tuple[range, ...]:
    """Cuts layers into contiguous groups; the first num_layers % num_groups get one more."""
    base, extra = divmod(num_layers, num_groups)
    groups, start = [], 0
    for g in range(num_groups):
        stop = start + base + (1 if g < extra else 0)
        groups.append(range(start, stop))
        start = stop
    return tuple(groups)


def stretches(num_layers: int, spans: list[range]) -> list[tuple[range, tuple[int, ...]]]:
    """Cuts the stack where any span starts or stops: (layers, indices of the spans covering them)."""
    cuts = sorted({0, num_layers} | {s.start for s in spans} | {s.stop for s in spans})
    out = []
    for start, stop in zip(cuts, cuts[1:]):
        out.append((range(start, stop), tuple(i for i, s in enumerate(spans) if s.start <= start and stop <= s.stop)))
    return out


def segment(batch: PrefillBatch, layers: range, num_layers: int) -> Segment:
    return Segment(batch.id, tuple(batch.chunks), layers,
                   tuple(batch.carry_rows) if batch.carry_rows is not None else None, layers.stop == num_layers)


def _flat(parts: list[list[T]]) -> list[T]:
    return [x for part in parts for x in part]

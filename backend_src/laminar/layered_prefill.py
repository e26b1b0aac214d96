"""Layered prefill in one place: how prompt tokens travel through the layers, step by step.

Every iteration runs each decoding sequence through every layer. Prompt tokens travel in
prefill batches: a batch's chunks cross the layers in order, a contiguous span of layers per
iteration, and each prompt token crosses each layer exactly once. A step is the decode rows
plus a set of segments, each one batch with the span it crosses now; layer l runs the decode
rows and the rows of every segment whose span covers l. Chunked prefill is the case where
every span is the whole stack, layered prefill the case of partial spans: one mechanism.

Two policies choose the segments:

* StaticPolicy (tbt_slo_ms unset) is the paper's: chunked mode fills the token budget left
  after the decodes; layered mode cuts one batch of up to max_num_batched_tokens tokens into G
  groups by its token count (<=512: 1, <=1024: 2, <=2048: 4, <=4096: 8, more: num_stages) and
  moves it one group per iteration.
* SloPolicy (tbt_slo_ms set) keeps every iteration's predicted time (cost_model.CostModel)
  within the target. Layered mode gives the batches in flight, oldest first, as many layers as
  the slack allows (all of them on an idle server). Once every batch in flight finishes its
  last layer in this step, a new batch starts with the slack left: the longest run of whole
  waiting prompts (FCFS) that crosses every layer in this step, so short prompts get their
  first token at once as in chunked prefill; or, when the first waiting prompt alone cannot,
  a batch of up to max_num_batched_tokens that starts its first layers, so a long prompt
  crosses each layer once instead of being re-run chunk by chunk. Chunked mode picks the
  chunk's token count from the same model (as SGLang does from its latency model). Either way
  prompts always make progress: at least one layer, or one minimum chunk, per iteration.

The logits rule: a row gets logits when it is a decode row, or the last row of a chunk that
completes its sequence's tokens in a segment that crosses the last layer now.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from laminar.config import EngineArgs
from laminar.sequence import Sequence

if TYPE_CHECKING:
    from laminar.cost_model import CostModel

MIN_CHUNK_TOKENS = 16  # chunked progress floor when the decodes alone exceed the target
SLO_HEADROOM = 0.9     # share of the target the prediction may fill: sampling and host jitter take the rest


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
    def sample_seqs(self) -> list[Sequence]:
        """Decodes always, then the sequences whose prompts complete in a finishing segment, in row order."""
        return list(self.decode) + [s for seg in self.segments for s in seg.sampled]

    @property
    def is_empty(self) -> bool:
        return not self.decode and not any(seg.chunks for seg in self.segments)


class BatchSource(Protocol):
    """The scheduler's prompt queue as the policies see it."""

    def propose(self, budget: int) -> list[Chunk]:
        """The chunks a new batch of at most budget tokens would hold (FCFS); changes nothing."""

    def open_batch(self, chunks: list[Chunk], groups: tuple[range, ...] | None) -> PrefillBatch:
        """Admits the chunks' sequences, grows their KV blocks, and puts the batch in flight."""


def paper_num_groups(args: EngineArgs, num_prefill_tokens: int, num_layers: int) -> int:
    """Layer groups for a prefill batch of this many tokens: the paper's static table."""
    groups = args.num_stages
    for i, threshold in enumerate(args.group_token_thresholds):
        if num_prefill_tokens <= threshold:
            groups = 2**i
            break
    return max(1, min(groups, args.num_stages, num_layers))


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


class StaticPolicy:
    """The paper's policy: fixed token budget, fixed group table."""

    def __init__(self, args: EngineArgs, num_layers: int) -> None:
        self.args, self.num_layers = args, num_layers
        self.layered = args.schedule_mode == "layered"

    def plan(self, decode: list[Sequence], batches: list[PrefillBatch], source: BatchSource) -> list[Segment]:
        full = range(self.num_layers)
        if not self.layered:
            chunks = source.propose(self.args.max_num_batched_tokens - len(decode))
            return [segment(source.open_batch(chunks, None), full, self.num_layers)] if chunks else []
        if batches:
            batch = batches[0]
        else:
            chunks = source.propose(self.args.max_num_batched_tokens)
            if not chunks:
                return []
            groups = paper_num_groups(self.args, sum(c.length for c in chunks), self.num_layers)
            batch = source.open_batch(chunks, split_layers(self.num_layers, groups))
        group = next(g for g in batch.groups if g.start == batch.layers_done)
        return [segment(batch, group, self.num_layers)]


class SloPolicy:
    """Spans (layered) or chunk sizes (chunked) chosen so the predicted step time meets tbt_slo_ms."""

    def __init__(self, args: EngineArgs, num_layers: int, cost: CostModel) -> None:
        self.args, self.num_layers, self.cost = args, num_layers, cost
        self.layered = args.schedule_mode == "layered"
        self.target_s = args.tbt_slo_ms * 1e-3 * SLO_HEADROOM if args.tbt_slo_ms else math.inf

    def plan(self, decode: list[Sequence], batches: list[PrefillBatch], source: BatchSource) -> list[Segment]:
        # Without decodes no one waits between tokens: prompts take the whole step.
        budget = self.target_s / self.cost.margin() if decode else math.inf
        base = StepShape.of(decode, ())
        segments: list[Segment] = []
        for batch in batches:
            done = batch.layers_done
            n = self._most(1 if not segments else 0, self.num_layers - done, budget,
                           lambda k, b=batch, d=done: self._with(base, segments, b.chunks, range(d, d + k)))
            if n == 0:
                return segments
            segments.append(segment(batch, range(done, done + n), self.num_layers))
        if any(not seg.finishes for seg in segments):
            return segments  # a batch stays in flight: it took all the slack
        tokens_left = self.args.max_num_batched_tokens - sum(seg.num_tokens for seg in segments)
        if not self.layered:
            tokens_left -= len(decode)
        return segments + self._new_batch(base, segments, tokens_left, budget, source)

    def _new_batch(self, base: StepShape, segments: list[Segment], tokens_left: int, budget: float,
                   source: BatchSource) -> list[Segment]:
        if tokens_left <= 0:
            return []
        full = range(self.num_layers)
        floor = 0 if segments or self.layered else min(tokens_left, MIN_CHUNK_TOKENS)
        tokens = self._most(floor, tokens_left, budget,
                            lambda t: self._with(base, segments, source.propose(t), full))
        chunks, span = source.propose(tokens), full
        if self.layered:
            chunks = list(itertools.takewhile(lambda c: c.completes, chunks))
            if not chunks:
                # The first prompt cannot cross every layer in this step: it travels in layers.
                chunks = source.propose(tokens_left)
                n = self._most(0 if segments else 1, self.num_layers, budget,
                               lambda k: self._with(base, segments, chunks, range(k)))
                span = range(n)
        if not chunks or not span:
            return []
        return [segment(source.open_batch(chunks, None), span, self.num_layers)]

    def _with(self, base: StepShape, segments: list[Segment], chunks, layers: range) -> StepShape:
        shapes = [SegmentShape.of(s.chunks, s.layers) for s in segments] + [SegmentShape.of(chunks, layers)]
        return StepShape(base.num_decode, base.decode_context, tuple(shapes))

    def _most(self, floor: int, ceiling: int, budget: float, shape_of: Callable[[int], StepShape]) -> int:
        """The largest k in [floor, ceiling] whose step fits the budget (floor if none does).

        The predicted time grows with k (more layers, more tokens), so a binary search finds it.
        """
        if ceiling <= floor or self.cost.predict(shape_of(ceiling)) <= budget:
            return ceiling
        lo, hi = floor, ceiling  # fits(lo) or lo == floor; not fits(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.cost.predict(shape_of(mid)) <= budget:
                lo = mid
            else:
                hi = mid
        return lo


def make_policy(args: EngineArgs, num_layers: int, cost: CostModel | None) -> StaticPolicy | SloPolicy:
    if args.tbt_slo_ms is None:
        return StaticPolicy(args, num_layers)
    if cost is None:
        raise ValueError("tbt_slo_ms needs a cost model")
    return SloPolicy(args, num_layers, cost)


"""The SLO policy: every iteration's predicted time (cost_model.CostModel) stays within tbt_slo_ms.

Layered mode gives the batches in flight, oldest first, as many layers as the slack allows (all
of them on an idle server). Once every batch in flight finishes its last layer in this step, a
new batch starts with the slack left: the longest run of whole waiting prompts (in prefill_order) that
crosses every layer in this step, so short prompts get their first token at once as in chunked
prefill; or, when the first waiting prompt alone cannot, a batch of up to
max_num_batched_tokens that starts its first layers, so a long prompt crosses each layer once
instead of being re-run chunk by chunk. Chunked mode picks the chunk's token count from the
same model (as SGLang does from its latency model). Either way prompts always make progress: at
least one layer, or one minimum chunk, per iteration.

The step time planned to is slo_control's: "fixed" (the default) plans to OPEN_LOOP_SCALE of the
target; "tail" steers it on the measured gaps between decode steps (tail_control.py). Fixed is
the default because it measured better: on one H100 (ShareGPT at 8 req/s, 300 requests,
perf/results/gpu-h100-2026-12-08-s8) it met the TBT SLO for 0.99 of requests, the tail control
for 0.54.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable

from laminar.config import SLO_CONTROLS, EngineArgs
from laminar.cost_model import CostModel
from laminar.policies.base import BatchSource, Decision, NewBatch
from laminar.policies.tail_control import DEFAULT_TAIL_SHARE, OPEN_LOOP_SCALE, TailControl, observe
from laminar.sequence import Sequence
from laminar.step_plan import PrefillBatch, Segment, SegmentShape, StepShape, segment

MIN_CHUNK_TOKENS = 16  # chunked progress floor when the decodes alone exceed the target
INFORMATIVE = (0.8, 1.2)  # predicted / budget of the prefill steps the controller learns from


class SloPolicy:
    """Spans (layered) or chunk sizes (chunked) chosen so the predicted step time meets tbt_slo_ms."""

    def __init__(self, args: EngineArgs, num_layers: int, cost: CostModel) -> None:
        self.args, self.num_layers, self.cost = args, num_layers, cost
        self.layered = args.schedule_mode == "layered"
        slo_s = args.tbt_slo_ms * 1e-3
        closed = (args.slo_control or SLO_CONTROLS[0]) == "tail"
        share = DEFAULT_TAIL_SHARE if args.slo_tail_share is None else args.slo_tail_share
        self.control = TailControl(slo_s, share * slo_s) if closed else None
        self.fixed_target_s = slo_s * OPEN_LOOP_SCALE

    @property
    def target_s(self) -> float:
        """The step time planned to, before the cost model's margin."""
        return self.control.target_s if self.control else self.fixed_target_s

    def observe(self, shape: StepShape, seconds: float) -> None:
        """One decode cycle as measured (start to start): the controller learns from the prefill
        steps that were planned up to the budget. The others say nothing about it: decode-only
        steps and steps far under it (the prompts fitted easily: counting them would wind the
        scale up while the server idles), and steps far over it, where the decodes alone exceed
        the target and the progress floor set the work (counting them would wind it down to its
        floor during an overload and starve prompts after it). The upper bound leaves room for
        the margin moving between the plan and now."""
        if self.control is None or not shape.segments:
            return
        if INFORMATIVE[0] <= self.cost.predict(shape) * self.cost.margin() / self.target_s <= INFORMATIVE[1]:
            observe(self.control, seconds)

    def plan(self, decode: list[Sequence], batches: list[PrefillBatch], source: BatchSource) -> Decision:
        # Without decodes no one waits between tokens: prompts take the whole step.
        budget = self.target_s / self.cost.margin() if decode else math.inf
        base = StepShape.of(decode, ())
        segments: list[Segment] = []
        for batch in batches:
            done = batch.layers_done
            n = self._most(1 if not segments else 0, self.num_layers - done, budget,
                           lambda k, b=batch, d=done: self._with(base, segments, b.chunks, range(d, d + k)))
            if n == 0:
                return Decision(segments)
            segments.append(segment(batch, range(done, done + n), self.num_layers))
        if any(not seg.finishes for seg in segments):
            return Decision(segments)  # a batch stays in flight: it took all the slack
        tokens_left = self.args.max_num_batched_tokens - sum(seg.num_tokens for seg in segments)
        if not self.layered:
            tokens_left -= len(decode)
        return Decision(segments, self._new_batch(base, segments, tokens_left, budget, source))

    def _new_batch(self, base: StepShape, segments: list[Segment], tokens_left: int, budget: float,
                   source: BatchSource) -> NewBatch | None:
        if tokens_left <= 0:
            return None
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
            return None
        return NewBatch(chunks, span)

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

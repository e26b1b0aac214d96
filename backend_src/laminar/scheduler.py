"""Request queues, admission, KV blocks and preemption; the prefill policy decides the segments.

Every decoding sequence joins every iteration; how prompt tokens travel (which batches, which
layer spans) is the prefill policy's decision (laminar.policies), which the scheduler applies:
it admits the new batch's sequences, grows their KV blocks and puts the batch in flight. A
prompt longer than the token budget is cut into chunks, each chunk a batch of its own that
crosses the layers under the same rule.

Prefix caching: a sequence is admitted with the cached blocks of its longest cached prefix, and
its first chunk starts after them, so only the uncached tokens form prefill batches (and are
what the policies and the cost model count); they attend to the cached prefix as context, as a
later chunk of a long prompt does. Blocks are registered in the cache when a segment crosses
the last layer, or a decode fills a block: never while a batch is still between layers.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

from laminar.block_manager import BlockManager
from laminar.config import EngineArgs
from laminar.cost_model import CostModel
from laminar.policies import Decision, NewBatch, keep_order, make_policy, waiting_order
from laminar.sequence import Sequence, Status
from laminar.step_plan import Chunk, PrefillBatch, Segment, SegmentShape, StepPlan, StepShape, segment


class Scheduler:
    def __init__(self, args: EngineArgs, num_layers: int, block_manager: BlockManager,
                 cost: CostModel | None = None) -> None:
        self.args = args
        self.num_layers = num_layers
        self.blocks = block_manager
        self.cost = cost
        self.policy = make_policy(args, num_layers, cost)
        self.waiting: deque[Sequence] = deque()   # arrival order; preempted sequences go back to the front
        self.queue: list[Sequence] | None = None  # this step's waiting sequences in prefill_order, once asked
        self.prefilling: list[Sequence] = []      # admitted, prompt not fully computed
        self.decoding: list[Sequence] = []        # one uncomputed token each, in admission order
        self.batches: list[PrefillBatch] = []     # prefill batches in flight, oldest first
        self.batch_ids = itertools.count()
        self.lookups: dict[Sequence, list[int]] = {}  # this step's prefix-cache hits per waiting sequence

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> StepPlan:
        self.lookups = {}  # the policies propose several times per step: look each prompt up once
        self.queue = None  # and order the queue once
        preempted: list[Sequence] = []
        self._make_room(preempted)
        decode = self._schedule_decodes(preempted)
        segments = self._apply(self.policy.plan(decode, self.batches, self))
        running = {seg.batch_id for seg in segments if seg.finishes}
        carried = tuple(b.id for b in self.batches if b.id not in running)
        shape = StepShape.of(decode, segments)
        predicted = self.cost.predict(shape) if self.cost is not None else None
        return StepPlan(tuple(decode), tuple(segments), carried, tuple(preempted), predicted, shape)

    def advance(self, plan: StepPlan) -> None:
        """Records the iteration's progress; sequences that reach their end move to decoding."""
        for seq in plan.decode:
            seq.num_computed += 1
            self.blocks.register(seq)
        for seg in plan.segments:
            batch = next(b for b in self.batches if b.id == seg.batch_id)
            batch.layers_done = seg.layers.stop
            batch.carry_rows = None  # the runner now holds exactly this batch's rows
            if not seg.finishes:
                continue
            for chunk in batch.chunks:
                chunk.seq.num_computed += chunk.length
                self.blocks.register(chunk.seq)
                if chunk.seq.num_uncomputed == 0:
                    self.prefilling.remove(chunk.seq)
                    chunk.seq.status = Status.DECODING
                    self.decoding.append(chunk.seq)
            self.batches.remove(batch)

    def _prefill_time(self) -> Callable[[Sequence], float] | None:
        """The cost model's time for a prompt's uncomputed tokens to cross every layer, beyond an
        empty step's (the deadline order's feasibility test); None without a cost model or for
        another order (this runs every step that admits)."""
        if self.cost is None or self.args.prefill_order != "deadline":
            return None
        cost, layers, empty = self.cost, range(self.num_layers), self.cost.predict(StepShape(0, 0, ()))

        def prefill_s(seq: Sequence) -> float:
            n, done = seq.num_uncomputed, seq.num_computed
            return cost.predict(StepShape(0, 0, (SegmentShape(n, n * (n + 1) // 2, n * done, layers),))) - empty
        return prefill_s

    def observe(self, shape: StepShape, seconds: float) -> None:
        """A decode cycle as its decodes waited (one step's start to the next one's): the SLO
        policy's tail controller steers on these."""
        self.policy.observe(shape, seconds)

    def propose(self, budget: int) -> list[Chunk]:
        """The chunks a new batch of at most budget tokens would hold: unfinished prompts not in
        flight first, then newly admitted ones (in prefill_order), as far as KV blocks and seats allow."""
        chunks: list[Chunk] = []
        in_flight = {id(c.seq) for b in self.batches for c in b.chunks}
        seats = self.args.max_num_seqs - len(self.decoding) - len(self.prefilling)
        free_blocks = self.blocks.num_free
        if self.queue is None:
            self.queue = waiting_order(self.args, self.waiting, time.monotonic(), self._prefill_time())
        for seq in itertools.chain(self.prefilling, self.queue):
            admitting = seq.status == Status.WAITING
            if budget <= 0 or (admitting and seats <= 0):
                break
            if id(seq) in in_flight:
                continue
            if admitting:
                hits = self._cached_prefix(seq)
                start = len(hits) * self.blocks.block_size
                length = min(seq.num_tokens - start, budget)
                needed = self.blocks.admission_cost(hits, start + length)
            else:
                start, length = seq.num_computed, min(seq.num_uncomputed, budget)
                needed = self.blocks.blocks_needed(seq, start + length)
            if needed > free_blocks:
                break
            free_blocks -= needed
            chunks.append(Chunk(seq, start, length))
            budget -= length
            seats -= 1 if admitting else 0
        return chunks

    def _apply(self, decision: Decision) -> list[Segment]:
        """The policy's segments, plus the segment of the batch it starts (opened here)."""
        new = decision.new_batch
        if new is None:
            return list(decision.segments)
        return [*decision.segments, segment(self._open_batch(new), new.layers, self.num_layers)]

    def _open_batch(self, new: NewBatch) -> PrefillBatch:
        """Admits the chunks' sequences, grows their blocks and puts the batch in flight."""
        for chunk in new.chunks:  # every cached prefix is taken before growing: growth may evict cached blocks
            if chunk.seq.status == Status.WAITING:
                self._admit(chunk)
        for chunk in new.chunks:
            self.blocks.grow(chunk.seq, chunk.start + chunk.length)
        batch = PrefillBatch(next(self.batch_ids), list(new.chunks), new.groups)
        self.batches.append(batch)
        return batch

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Admits another sample of parent's prompt: it shares parent's prompt blocks (reference
        counted) but the one holding the last prompt token, whose logits it computes itself, as
        a prefix-cache hit would. Parent's prompt KV must be complete (it has sampled)."""
        shared = (parent.num_prompt_tokens - 1) // self.blocks.block_size
        self.blocks.admit(child, parent.block_table[:shared])
        child.num_computed = child.num_cached_tokens = shared * self.blocks.block_size
        child.status = Status.PREFILLING
        self.prefilling.append(child)

    def _cached_prefix(self, seq: Sequence) -> list[int]:
        if seq.params.prompt_logprobs is not None:
            return []  # a cached prefix has no logits to take prompt logprobs from
        if seq not in self.lookups:
            self.lookups[seq] = self.blocks.lookup(seq)
        return self.lookups[seq]

    def _admit(self, chunk: Chunk) -> None:
        """A waiting sequence joins: it shares the cached blocks before chunk.start, which it skips."""
        seq = chunk.seq
        self.blocks.admit(seq, self._cached_prefix(seq)[: chunk.start // self.blocks.block_size])
        seq.num_computed = chunk.start
        if seq.num_cached_tokens is None:  # a recompute after preemption is not a prompt's lookup
            seq.num_cached_tokens = chunk.start
        self.waiting.remove(seq)
        seq.status = Status.PREFILLING
        self.prefilling.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Takes seq out of every queue and the in-flight batch, and frees its blocks."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.prefilling:
            self.prefilling.remove(seq)
        elif seq in self.decoding:
            self.decoding.remove(seq)
        for batch in list(self.batches):
            batch.remove(seq)
            if not batch.chunks:
                self.batches.remove(batch)
        self.blocks.free(seq)

    def _schedule_decodes(self, preempted: list[Sequence]) -> list[Sequence]:
        """Gives every decoding sequence room for its next token, preempting the last in keep_order
        (the newest, or the lowest priority) when full.

        A sequence whose pending token (asynchronous scheduling) is its max_tokens-th is not
        decoded: that token ends it when it arrives. Any other pending token is planned with as
        if it continues; if it turns out to stop the sequence, the engine drops the extra row.
        """
        last = {seq for seq in self.decoding if _ending(seq)}
        queue = deque(keep_order(self.args, (seq for seq in self.decoding if seq not in last)))
        decode: list[Sequence] = []
        while queue:
            seq = queue.popleft()
            while not self.blocks.can_grow(seq, seq.num_tokens):
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                preempted.append(victim)
                if victim is seq:
                    break
            else:
                self.blocks.grow(seq, seq.num_tokens)
                decode.append(seq)
        # The plan keeps its own tuple: decoding changes as requests end.
        kept = last | set(decode)
        self.decoding = [seq for seq in self.decoding if seq in kept]
        return decode

    def _make_room(self, preempted: list[Sequence]) -> None:
        """The bounded wait for KV (EngineArgs.max_kv_wait_ms): the first prompt in admission
        order that has waited that long and does not fit beside the decodes' next tokens preempts
        the newest decodes (the last in keep_order) until it does, and is admitted with the blocks
        of its whole prompt at once: the blocks freed for it are its own, whatever order the
        preempted sequences go back in. Without it, long generations that fill the cache hold a
        new prompt back until one ends (an 8k prompt waited 328 s behind 60 decodes on an H100:
        perf/results/gpu-h100-2026-12-08-s8)."""
        if self.args.max_kv_wait_ms is None:
            return
        now, bound_s = time.monotonic(), self.args.max_kv_wait_ms * 1e-3
        overdue = [s for s in self.waiting if not s.output_token_ids and now - s.arrival_time >= bound_s]
        if not overdue:
            return
        seq = waiting_order(self.args, overdue, now)[0]
        hits = self._cached_prefix(seq)
        # The prompts admitted before it keep the blocks their remaining chunks need: taking
        # those would leave every prefill short of blocks, with no decode left to preempt.
        needed = self.blocks.admission_cost(hits, seq.num_tokens) + sum(
            self.blocks.blocks_needed(s, s.num_tokens) for s in self.prefilling)
        free, growing = self.blocks.num_free, len(self.decoding)  # each decode may take a block this step
        if needed + growing <= free:
            return  # it fits: the policy admits it
        victims, chosen = [s for s in keep_order(self.args, self.decoding) if not _ending(s)], []
        while victims and needed + growing > free:
            chosen.append(victims.pop())
            free += self.blocks.reclaimable(chosen[-1])
            growing -= 1
        seats = self.args.max_num_seqs - len(self.decoding) - len(self.prefilling) + len(chosen)
        if needed + growing > free or seats <= 0:
            return  # preempting every decode would not make room: it waits as before
        for victim in chosen:
            self.decoding.remove(victim)
            self._preempt(victim)
            preempted.append(victim)
        start = len(hits) * self.blocks.block_size
        self._admit(Chunk(seq, start, seq.num_tokens - start))
        self.blocks.grow(seq, seq.num_tokens)

    def _preempt(self, seq: Sequence) -> None:
        """Recompute-style preemption: drop the KV cache, keep the tokens, queue at the front."""
        self.blocks.free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)


def _ending(seq: Sequence) -> bool:
    """Its pending token (asynchronous scheduling) is its max_tokens-th: that token ends it."""
    return bool(seq.num_pending) and len(seq.output_token_ids) >= seq.params.max_tokens

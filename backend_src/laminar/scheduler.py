"""Iteration planning for layered prefill and for chunked prefill (the baseline).

Both modes run every decoding sequence through every layer in every iteration.
They differ in how prompt tokens travel:

* chunked: each iteration fills the token budget left after the decodes with
  prompt chunks, and every chunk crosses all layers at once;
* layered: a prefill batch of up to max_num_batched_tokens prompt tokens is
  formed, cut into G layer groups, and crosses one group per iteration; its
  first tokens are sampled after G iterations, then the next batch is formed.
  A prompt longer than the budget is cut into chunks, each chunk layered.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from laminar.block_manager import BlockManager
from laminar.config import EngineArgs, split_layers
from laminar.sequence import Sequence, Status


@dataclass
class Chunk:
    """Prompt tokens [start, start + length) of seq, computed by one prefill batch."""

    seq: Sequence
    start: int
    length: int

    @property
    def completes(self) -> bool:
        """Whether this chunk computes the last uncomputed token, so a token is sampled after it."""
        return self.start + self.length == self.seq.num_tokens


@dataclass
class PrefillBatch:
    """Prompt chunks that cross the layer groups together.

    Between groups their (hidden, residual) rows stay on the device, held by the
    model runner of every rank; carry_rows lists the rows still in the batch when
    chunks were dropped since the last group ran (None: all of them).
    """

    chunks: list[Chunk]
    groups: list[range]
    next_group: int = 0
    carry_rows: list[int] | None = None

    @property
    def num_tokens(self) -> int:
        return sum(c.length for c in self.chunks)

    @property
    def layers(self) -> range:
        return self.groups[self.next_group]

    @property
    def on_last_group(self) -> bool:
        return self.next_group == len(self.groups) - 1

    def remove(self, seq: Sequence) -> None:
        """Drops seq's chunk and its carried rows (abort while its batch is in flight)."""
        if all(c.seq is not seq for c in self.chunks):
            return
        keep, offset, rows = [], 0, []
        for c in self.chunks:
            if c.seq is not seq:
                keep.append(c)
                rows.extend(range(offset, offset + c.length))
            offset += c.length
        if self.next_group > 0:
            current = self.carry_rows if self.carry_rows is not None else range(offset)
            self.carry_rows = [current[r] for r in rows]
        self.chunks = keep


@dataclass
class StepPlan:
    """What one iteration computes, and which sequences get a token from it."""

    decode: list[Sequence]
    prefill: PrefillBatch | None
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def prefill_layers(self) -> range:
        return self.prefill.layers if self.prefill else range(0)

    @property
    def sample_seqs(self) -> list[Sequence]:
        """Decodes always; prefill chunks that end their sequence's tokens, on the batch's last group."""
        done = []
        if self.prefill is not None and self.prefill.on_last_group:
            done = [c.seq for c in self.prefill.chunks if c.completes]
        return self.decode + done

    @property
    def is_empty(self) -> bool:
        return not self.decode and not (self.prefill and self.prefill.chunks)


class Scheduler:
    def __init__(self, args: EngineArgs, num_layers: int, block_manager: BlockManager) -> None:
        self.args = args
        self.num_layers = num_layers
        self.blocks = block_manager
        self.layered = args.schedule_mode == "layered"
        self.waiting: deque[Sequence] = deque()   # FCFS; preempted sequences go back to the front
        self.prefilling: list[Sequence] = []      # admitted, prompt not fully computed
        self.running: list[Sequence] = []         # decoding, in admission order
        self.batch: PrefillBatch | None = None    # layered mode: the batch crossing the groups

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> StepPlan:
        preempted: list[Sequence] = []
        decode = self._schedule_decodes(preempted)
        if self.layered:
            if self.batch is None:
                self.batch = self._form_batch(self.args.max_num_batched_tokens)
            batch = self.batch
        else:
            batch = self._form_batch(self.args.max_num_batched_tokens - len(decode))
        return StepPlan(decode, batch, preempted)

    def advance(self, plan: StepPlan) -> None:
        """Records the iteration's progress; sequences that reach their end move to decoding."""
        for seq in plan.decode:
            seq.num_computed += 1
        batch = plan.prefill
        if batch is None:
            return
        batch.next_group += 1
        batch.carry_rows = None  # the runner now holds exactly this batch's rows
        if batch.next_group < len(batch.groups):
            return
        for chunk in batch.chunks:
            chunk.seq.num_computed += chunk.length
            if chunk.seq.num_uncomputed == 0:
                self.prefilling.remove(chunk.seq)
                chunk.seq.status = Status.RUNNING
                self.running.append(chunk.seq)
        self.batch = None

    def remove(self, seq: Sequence) -> None:
        """Takes seq out of every queue and the in-flight batch, and frees its blocks."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.prefilling:
            self.prefilling.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
        if self.batch is not None:
            self.batch.remove(seq)
            if not self.batch.chunks:
                self.batch = None
        self.blocks.free(seq)

    def _schedule_decodes(self, preempted: list[Sequence]) -> list[Sequence]:
        """Gives every decoding sequence room for its next token, preempting the newest when full."""
        queue = deque(self.running)
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
        self.running = list(decode)  # the plan keeps its own list: running changes as requests end
        return decode

    def _preempt(self, seq: Sequence) -> None:
        """Recompute-style preemption: drop the KV cache, keep the tokens, queue at the front."""
        self.blocks.free(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    def _form_batch(self, budget: int) -> PrefillBatch | None:
        """Fills a prefill batch FCFS: unfinished prompts first, then newly admitted ones."""
        chunks: list[Chunk] = []
        free_slots = self.args.max_num_seqs - len(self.running) - len(self.prefilling)
        candidates = list(self.prefilling) + list(self.waiting)
        for seq in candidates:
            admitting = seq.status == Status.WAITING
            if budget <= 0 or (admitting and free_slots <= 0):
                break
            length = min(seq.num_uncomputed, budget)
            if not self.blocks.can_grow(seq, seq.num_computed + length):
                break
            self.blocks.grow(seq, seq.num_computed + length)
            chunks.append(Chunk(seq, seq.num_computed, length))
            budget -= length
            if admitting:
                self.waiting.remove(seq)
                seq.status = Status.PREFILLING
                self.prefilling.append(seq)
                free_slots -= 1
        if not chunks:
            return None
        tokens = sum(c.length for c in chunks)
        num_groups = self.args.num_groups(tokens, self.num_layers) if self.layered else 1
        return PrefillBatch(chunks, split_layers(self.num_layers, num_groups))

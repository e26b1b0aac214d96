"""What every prefill policy reads (the prompt queue, read-only) and what it returns (its decision)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from laminar.step_plan import Chunk, Segment


class BatchSource(Protocol):
    """The scheduler's prompt queue as the policies see it: they look, the scheduler acts."""

    def propose(self, budget: int) -> list[Chunk]:
        """The chunks a new batch of at most budget tokens would hold (in prefill_order); changes nothing."""


@dataclass(frozen=True)
class NewBatch:
    """A batch the policy wants started: the scheduler admits its sequences, grows their KV
    blocks, puts it in flight, and runs it across `layers` in this step."""

    chunks: list[Chunk]
    layers: range
    groups: tuple[range, ...] | None = None  # fixed layer groups (static policy); None: spans chosen per step


@dataclass(frozen=True)
class Decision:
    """One step's prefill work: segments of the batches in flight (oldest first), then at most
    one new batch, whose segment comes last."""

    segments: list[Segment] = field(default_factory=list)
    new_batch: NewBatch | None = None

"""How long the device waited for the host in a step: the host's time on the critical path.

A step's device work comes in two parts, the forward and the sampling, each enqueued by the host.
Timing events mark where each part starts and ends on the device's stream; wherever a part's
start comes later than the end of the work before it, the device sat idle waiting for the host
to enqueue it (scheduling, building inputs, reading tokens, checking stops). Synchronous stepping
idles between steps for all of that host work; asynchronous scheduling enqueues the next step
before the device finishes the last, so the gap closes. A step after the engine sat idle counts
that wait too. CUDA only: elsewhere there is no stream.
"""
from __future__ import annotations

import torch


class IdleClock:
    """Marks on one device's stream; remembers the last step's end across steps."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda"
        self.last_end: torch.cuda.Event | None = None

    def mark(self) -> torch.cuda.Event | None:
        """A timing event at this point of the stream (None off CUDA)."""
        if not self.enabled:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event


def idle_seconds(marks: list[torch.cuda.Event | None]) -> float | None:
    """Idle time over (end, start) pairs of marks: [previous end, forward start, forward end,
    sampling start]; a missing previous end (the first step) counts nothing. Every event must have
    completed (the caller has waited for a later one)."""
    if marks[1] is None:
        return None
    pairs = [(marks[i], marks[i + 1]) for i in (0, 2) if marks[i] is not None]
    return sum(max(end.elapsed_time(start), 0.0) for end, start in pairs) / 1e3

"""The order in which waiting prompts are offered to the prefill policy (EngineArgs.prefill_order).

* fcfs: arrival order (preempted sequences first, as they go back to the queue's front).
* short-first: the shortest prompt first, so that under load more prompts complete within one
  step (the SLO policy's layered mode takes the longest run of whole prompts that crosses every
  layer now; chunked mode fills its token budget) and mean TTFT drops, as shortest-remaining-
  work-first does in any queue; Niyama's hybrid priority and SLOs-Serve's planner also favour
  the prompts that fit the step. Its cost is the long prompt's wait, so the reordering is
  bounded: a prompt that has waited max_queue_wait_ms goes ahead of every prompt that has not,
  and the overdue ones keep arrival order among themselves. A prompt's wait is therefore at
  most the bound plus the time to serve the prompts overdue before it: no prompt starves,
  however many short ones keep arriving. Sequences that were preempted (they have output) are
  overdue at once: they were running, as FCFS also puts them first. Requests carry no TTFT
  budget of their own in the API, so the bound is the engine's: about half the TTFT SLO leaves
  an overdue prompt the other half to be computed.

FCFS stays the default until the replay (perf/replay.py, the layered-slo100-tail-sf engine) shows
short-first's goodput gain on the GPU: on a workload of uniform prompts it only reorders ties,
and where prompts are long (arXiv-like), fewer of them fit a step either way.
"""
from __future__ import annotations

from collections.abc import Iterable

from laminar.config import EngineArgs
from laminar.sequence import Sequence

DEFAULT_MAX_QUEUE_WAIT_MS = 1000.0  # max_queue_wait_ms when unset: half the sweeps' 2 s TTFT SLO


def waiting_order(args: EngineArgs, waiting: Iterable[Sequence], now: float) -> list[Sequence]:
    """The waiting sequences in the order prefill_order admits them (now: time.monotonic())."""
    if args.prefill_order == "fcfs":
        return list(waiting)
    wait_ms = DEFAULT_MAX_QUEUE_WAIT_MS if args.max_queue_wait_ms is None else args.max_queue_wait_ms
    bound_s = wait_ms * 1e-3

    def key(seq: Sequence) -> tuple[int, float, float]:
        if seq.output_token_ids or now - seq.arrival_time >= bound_s:
            return (0, seq.arrival_time, 0.0)
        return (1, seq.num_tokens, seq.arrival_time)

    return sorted(waiting, key=key)

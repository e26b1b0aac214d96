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
* deadline: each request's TTFT budget is its own (SamplingParams.ttft_slo_ms, for clients that
  mix interactive and batch traffic) or the engine's ttft_slo_ms; earliest deadline first
  (arrival + budget) among the prompts that can still make theirs. EDF alone is the best order
  while every deadline can be met and the worst under overload: prompts already late go first
  and make the next ones late too. So a prompt past its deadline, which no longer counts towards
  goodput, waits behind those still in time, for at most one more budget: then it goes ahead of
  all (no starvation). Preempted sequences go first, as under FCFS. Where the engine has a cost
  model (the SLO policy's), a prompt that cannot make its deadline even so is treated as late at
  once: walking the prompts in time in deadline order, each one's predicted prefill time is added
  to that of those before it (the preempted and twice-late ones included), and one whose sum
  would end past its deadline waits behind the others instead of delaying them too (the rule of
  Moore and Hodgson's on-time count, with prefill times from the cost model: alone, without the
  decodes the steps share, so it demotes only prompts sure to miss by that count). With one
  budget for every request the order is otherwise arrival order among the prompts in time, so it
  pays where budgets differ (interactive and batch traffic on one server). On the CPU demo
  (perf/results/replay-cpu-orders) it beat FCFS 1.18x in SLO attainment with mixed budgets in a
  short burst, and lost to short-first in a deeper overload (0.80x, the demotion on or off), where
  short-first also wins with uniform budgets (1.58x). That loss is the one-budget bound: with late
  prompts never going first it tied short-first (1.01x), at the price of the starvation guarantee.
* priority: vLLM's priority scheduling: the request's priority, lower first, then arrival order.
  Strict: a stream of urgent requests can hold back a lower priority for as long as it lasts,
  which is what the client asked for. When the KV cache is full it is also the order in which
  decoding sequences keep their blocks (keep_order): the lowest priority is preempted first, as
  in vLLM, where the other orders preempt the newest.

FCFS stays the default until the replay (perf/replay.py, the layered-slo100-tail-sf engine) shows
short-first's goodput gain on the GPU: on a workload of uniform prompts it only reorders ties,
and where prompts are long (arXiv-like), fewer of them fit a step either way.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from laminar.config import EngineArgs
from laminar.sequence import Sequence

DEFAULT_MAX_QUEUE_WAIT_MS = 1000.0  # max_queue_wait_ms when unset: half the sweeps' 2 s TTFT SLO
DEFAULT_TTFT_SLO_MS = 2000.0  # ttft_slo_ms when neither the request nor the engine sets it: the sweeps'

OrderKey = tuple[int, float, float]


def waiting_order(args: EngineArgs, waiting: Iterable[Sequence], now: float,
                  prefill_s: Callable[[Sequence], float] | None = None) -> list[Sequence]:
    """The waiting sequences in the order prefill_order admits them (now: time.monotonic()).
    prefill_s: a prompt's predicted prefill time, where a cost model gives one (deadline order)."""
    if args.prefill_order == "fcfs":
        return list(waiting)
    keys = {"short-first": _short_first, "deadline": _deadline, "priority": _priority}[args.prefill_order]
    key = keys(args, now)
    ordered = sorted(waiting, key=key)
    if args.prefill_order == "deadline" and prefill_s is not None:
        return _demote_infeasible(ordered, key, now, prefill_s)
    return ordered


def _short_first(args: EngineArgs, now: float) -> Callable[[Sequence], OrderKey]:
    wait_ms = DEFAULT_MAX_QUEUE_WAIT_MS if args.max_queue_wait_ms is None else args.max_queue_wait_ms
    bound_s = wait_ms * 1e-3

    def key(seq: Sequence) -> OrderKey:
        if seq.output_token_ids or now - seq.arrival_time >= bound_s:
            return (0, seq.arrival_time, 0.0)
        return (1, seq.num_tokens, seq.arrival_time)
    return key


def _deadline(args: EngineArgs, now: float) -> Callable[[Sequence], OrderKey]:
    engine_ms = DEFAULT_TTFT_SLO_MS if args.ttft_slo_ms is None else args.ttft_slo_ms

    def key(seq: Sequence) -> OrderKey:
        budget_s = (engine_ms if seq.params.ttft_slo_ms is None else seq.params.ttft_slo_ms) * 1e-3
        deadline = seq.arrival_time + budget_s
        if seq.output_token_ids:
            return (0, seq.arrival_time, 0.0)
        if now <= deadline:
            return (1, deadline, seq.arrival_time)
        if now <= deadline + budget_s:
            return (2, deadline, seq.arrival_time)
        return (0, deadline, seq.arrival_time)
    return key


def _demote_infeasible(ordered: list[Sequence], key: Callable[[Sequence], OrderKey], now: float,
                       prefill_s: Callable[[Sequence], float]) -> list[Sequence]:
    """The deadline order with each prompt in time whose prefill, after those before it, would end
    past its deadline moved behind the prompts in time (ahead of the late ones, by deadline)."""
    first, hopeless, late = [], [], []
    ahead = 0.0
    for seq in ordered:
        klass, deadline, _ = key(seq)
        if klass == 2:
            late.append(seq)
            continue
        need = prefill_s(seq)
        if klass == 1 and now + ahead + need > deadline:
            hopeless.append(seq)
            continue
        first.append(seq)
        ahead += need
    return first + sorted(hopeless + late, key=lambda s: key(s)[1:])


def _priority(args: EngineArgs, now: float) -> Callable[[Sequence], OrderKey]:
    return _by_priority


def _by_priority(seq: Sequence) -> OrderKey:
    return (seq.params.priority, seq.arrival_time, 0.0)


def keep_order(args: EngineArgs, decoding: Iterable[Sequence]) -> list[Sequence]:
    """The decoding sequences in the order they keep their KV blocks when the cache runs out (the
    last is preempted first): admission order, or by priority under prefill_order "priority"."""
    if args.prefill_order != "priority":
        return list(decoding)
    return sorted(decoding, key=_by_priority)

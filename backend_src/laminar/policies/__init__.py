"""Prefill policies, chosen by name (EngineArgs.prefill_policy): which prompt tokens cross which
layers in each step. A policy looks at the decodes, the batches in flight and the prompt queue,
and returns a Decision; the scheduler applies it (admission, KV blocks). Only the scheduler
imports this package: the step's data model below it (laminar.step_plan) is what the rest reads.

* static: the paper's fixed token budget and group table (static.py).
* slo: the largest prefill work whose predicted step time meets tbt_slo_ms (slo.py), the step
  time planned to steered by the measured gaps (tail_control.py).
The order in which waiting prompts are offered is prefill_order's (order.py), under any policy.
"""
from __future__ import annotations

from laminar.config import EngineArgs
from laminar.cost_model import CostModel
from laminar.policies.base import BatchSource, Decision, NewBatch
from laminar.policies.order import keep_order, waiting_order
from laminar.policies.slo import SloPolicy
from laminar.policies.static import StaticPolicy

Policy = StaticPolicy | SloPolicy


def make_policy(args: EngineArgs, num_layers: int, cost: CostModel | None) -> Policy:
    """The policy EngineArgs names (its options were validated with the arguments)."""
    if args.prefill_policy == "static":
        return StaticPolicy(args, num_layers)
    if cost is None:
        raise ValueError("prefill_policy 'slo' needs a cost model")
    return SloPolicy(args, num_layers, cost)


__all__ = ["BatchSource", "Decision", "NewBatch", "Policy", "SloPolicy", "StaticPolicy", "keep_order",
           "make_policy", "waiting_order"]

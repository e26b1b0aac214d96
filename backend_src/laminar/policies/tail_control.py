"""Closed-loop TBT control: the SLO policy's planning target, steered by the measured gap tail.

The cost model is the feed-forward part: it turns a target step time into prompt work. What it
cannot see (sampling, detokenization, the caller's work between steps, host jitter, the part of
its own error its margin misses) decides how far the gaps clients see sit from tbt_slo_ms. A
fixed headroom (plan to 90% of the target) leaves that distance to chance: on a quiet host the
budget goes unused, on a noisy one the tail crosses the SLO. This controller closes the loop on
what the engine measures: the time from one decode step's start to the next one's (the gap every
decode in the step waited), and moves the planning target until the tail of those gaps sits at
a set share of the SLO.

The law: every EPOCH informative gaps, tail = their TAIL_QUANTILE, and
    scale <- clip(scale * clip((setpoint / tail) ** GAIN, *STEP_LIMITS), *SCALE_LIMITS);
an informative gap over the SLO itself backs off at once (and starts a new epoch). A request's
P99 gap is about the largest it saw, so one step over the SLO fails every request decoding in it:
the controller cannot wait for the end of an epoch to answer one.
an integral controller in log space (the step time grows about in proportion to the target when
the target binds, so the loop gain is about GAIN per epoch). Each epoch is measured afresh (the
gaps are cleared after an update), so an update sees only steps planned with the current scale:
no lag from a sliding window that still holds the old ones. The step limits are asymmetric:
backing off (x0.8) is fast, claiming room (x1.1) slow, because a crossing of the SLO costs
requests and unused room only costs TTFT.

Only informative gaps count, and the caller (SloPolicy.observe) decides which: the steps whose
planned work filled about the budget. Decode-only steps, prefill steps far under the budget and
the progress floor's steps far over it say nothing about whether the budget is right; counting
them would wind the scale to a clamp while the server idles or is overloaded, and overshoot (or
starve prompts) when the load changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPOCH = 32                   # informative gaps per update
# Of an epoch's gaps, the tail that is steered: about the largest. The SLO is each request's own P99
# gap, and steering the 95th percentile let 7% of requests cross it (ShareGPT at 8 req/s, one H100,
# perf/results/gpu-h100-2026-12-07-s7: the planning target ended at 1.12x the SLO).
TAIL_QUANTILE = 0.99
GAIN = 0.5                   # share of the log error corrected per epoch
STEP_LIMITS = (0.8, 1.1)     # one update's factor: fast back-off, slow claim
SCALE_LIMITS = (0.5, 1.25)   # planning target / tbt_slo: above 1 where the cost model's margin overshoots
OPEN_LOOP_SCALE = 0.9        # 'fixed' control's share of the SLO (sampling and host jitter take the rest); where 'tail' starts
DEFAULT_TAIL_SHARE = 0.9     # slo_tail_share when unset: the setpoint as a share of tbt_slo_ms


@dataclass
class TailControl:
    """The controller's whole state: the SLO, where its tail should sit, the scale, this epoch's gaps."""

    slo_s: float
    setpoint_s: float                     # where the tail of the gaps is steered (a share of slo_s)
    scale: float = OPEN_LOOP_SCALE        # planning target = scale * slo_s
    gaps: list[float] = field(default_factory=list)

    @property
    def target_s(self) -> float:
        """The step time the policy plans to (before the cost model's margin)."""
        return self.scale * self.slo_s


def observe(control: TailControl, gap_s: float) -> None:
    """Adds one informative gap; at the end of an epoch, or at once for a gap over the SLO, moves
    the scale toward the setpoint."""
    control.gaps.append(gap_s)
    if gap_s > control.slo_s:
        step = STEP_LIMITS[0]
    elif len(control.gaps) < EPOCH:
        return
    else:
        tail = float(np.quantile(control.gaps, TAIL_QUANTILE))
        step = float(np.clip((control.setpoint_s / max(tail, 1e-9)) ** GAIN, *STEP_LIMITS))
    control.gaps.clear()
    control.scale = float(np.clip(control.scale * step, *SCALE_LIMITS))

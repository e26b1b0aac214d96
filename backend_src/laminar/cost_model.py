"""Predicts one iteration's time from its shape, from measurements on the engine's own device.

The profile (taken at start-up by profiler.Profiler) holds the per-layer time of decode-only
layers by batch size, of mixed layers by row count (prompts cut into short sequences), and three
slopes: decode attention per context token, prefill attention per query-key pair within a
chunk, and per pair between a chunk and its earlier tokens. A step's prediction is a weighted
sum of six features built from them. The weights start at 1 (the
profile as measured, plus no fixed overhead) and are refit online from the step times the engine
measures: least squares on relative error, pulled toward the profile, so the model follows what
the profile misses (sampling, host work, decode rows riding along in a mixed layer) without
drifting on a few noisy steps.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from laminar.step_plan import StepShape, stretches

FEATURES = ("decode_layers", "mixed_layers", "decode_context", "prefill_self_attention",
            "prefill_context_attention", "overhead")
OVERHEAD_UNIT_S = 1e-3     # the overhead feature is one millisecond, its weight how many
REFIT_EVERY = 8            # steps between two refits
WINDOW = 256               # steps the fit remembers
RIDGE = 0.5                # pull toward the profile's weights, in units of one step's squared relative error
MARGIN_QUANTILE = 0.9      # of measured / predicted over recent prefill steps: the SLO policy plans below it
MARGIN_LIMITS = (1.0, 1.5)
MARGIN_WINDOW = 64
PROFILE_SEQ_TOKENS = 128   # prompt length of the profiled mixed layers; longer attention goes to the pair slope


@dataclass(frozen=True)
class Profile:
    """Per-layer seconds measured on the device, and the two attention slopes."""

    num_layers: int
    decode_rows: tuple[int, ...]
    decode_s: tuple[float, ...]
    mixed_rows: tuple[int, ...]
    mixed_s: tuple[float, ...]
    context_s: float       # per layer, per decode context token
    self_pair_s: float     # per layer, per causal pair within a chunk beyond those of PROFILE_SEQ_TOKENS-long prompts
    context_pair_s: float  # per layer, per pair between a chunk and its earlier tokens

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def interpolate(rows: int, xs: tuple[int, ...], ys: tuple[float, ...]) -> float:
    """Piecewise linear in the row count; proportional beyond the largest measured size."""
    if rows <= 0:
        return 0.0
    if rows >= xs[-1]:
        return ys[-1] * rows / xs[-1]
    return float(np.interp(rows, xs, ys))


class CostModel:
    def __init__(self, profile: Profile, learn: bool = True) -> None:
        self.profile = profile
        self.learn = learn
        self.prior = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
        self.weights = self.prior.copy()
        self.samples: deque[tuple[np.ndarray, float]] = deque(maxlen=WINDOW)
        self.since_fit = 0
        self.prefill_steps: deque[tuple[np.ndarray, float]] = deque(maxlen=MARGIN_WINDOW)  # features, seconds
        self.cached_margin: float | None = None  # margin() until a prefill step or a refit changes it

    def features(self, shape: StepShape) -> np.ndarray:
        p = self.profile
        f = np.zeros(len(FEATURES))
        for layers, active in stretches(p.num_layers, [s.layers for s in shape.segments]):
            rows = shape.num_decode + sum(shape.segments[i].tokens for i in active)
            if active:
                f[1] += len(layers) * interpolate(rows, p.mixed_rows, p.mixed_s)
            else:
                f[0] += len(layers) * interpolate(rows, p.decode_rows, p.decode_s)
        f[2] = p.num_layers * shape.decode_context * p.context_s
        intrinsic = (PROFILE_SEQ_TOKENS + 1) / 2
        f[3] = sum(len(s.layers) * max(s.self_pairs - s.tokens * intrinsic, 0.0) for s in shape.segments) * p.self_pair_s
        f[4] = sum(len(s.layers) * s.context_pairs for s in shape.segments) * p.context_pair_s
        f[5] = OVERHEAD_UNIT_S
        return f

    def predict(self, shape: StepShape) -> float:
        return float(self.features(shape) @ self.weights)

    def observe(self, shape: StepShape, seconds: float) -> None:
        """Records a measured step; refits the weights every REFIT_EVERY steps."""
        if not self.learn or seconds <= 0:
            return
        features = self.features(shape)
        if shape.segments:
            self.prefill_steps.append((features, seconds))
            self.cached_margin = None
        self.samples.append((features, seconds))
        self.since_fit += 1
        if self.since_fit >= REFIT_EVERY:
            self.since_fit = 0
            self.weights = self._fit()
            self.cached_margin = None

    def margin(self) -> float:
        """How much longer than the current fit predicts recent prefill steps ran (their 90th
        percentile, within MARGIN_LIMITS): the fit is unbiased on average, a TBT target is about
        the tail. Judged with the current weights, so steps from before a refit do not linger."""
        if len(self.prefill_steps) < 8:
            return MARGIN_LIMITS[0]
        if self.cached_margin is None:
            features = np.array([f for f, _ in self.prefill_steps])
            seconds = np.array([t for _, t in self.prefill_steps])
            ratios = seconds / np.maximum(features @ self.weights, 1e-9)
            self.cached_margin = float(np.clip(np.quantile(ratios, MARGIN_QUANTILE), *MARGIN_LIMITS))
        return self.cached_margin

    def _fit(self) -> np.ndarray:
        """Weights minimising sum((w.f - t) / t)^2 + RIDGE * |w - prior|^2, kept non-negative."""
        a = np.array([f / t for f, t in self.samples])
        lhs = a.T @ a + RIDGE * np.eye(len(FEATURES))
        rhs = a.T @ np.ones(len(a)) + RIDGE * self.prior
        return np.clip(np.linalg.solve(lhs, rhs), 0.0, None)

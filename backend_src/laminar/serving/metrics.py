"""Serving metrics published on Triton's /metrics endpoint through the Python backend's
custom-metrics API (`pb_utils.MetricFamily`; histograms need server >= 2.49, we ship 2.51).

Called from the engine loop thread and, for rejected requests, from Triton's execute thread.
All names start with `lp:` and carry the labels model and version. Engine counters (tokens,
iterations per schedule phase, expert bytes, preemptions) are published as deltas of the
engine's cumulative EngineStats, so they agree with what the engine itself counted.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from laminar import EngineStats

LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                   2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0]
TOKEN_LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                         0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
PREFILL_LAYER_BUCKETS = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192]
PREDICTION_RATIO_BUCKETS = [0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 2.0, 3.0]

# EngineStats counter field -> (metric name, extra labels); published as deltas.
STAT_COUNTERS = {
    "prompt_tokens": ("lp:prompt_tokens_total", {}),
    "generated_tokens": ("lp:generation_tokens_total", {}),
    "expert_bytes_total": ("lp:expert_weight_bytes_total", {}),
    "energy_joules": ("lp:gpu_energy_joules_total", {}),
    "num_preemptions": ("lp:num_preemptions_total", {}),
    "prefix_cache_queries": ("lp:prefix_cache_queries_total", {}),
    "prefix_cache_hits": ("lp:prefix_cache_hits_total", {}),
    "prefill_iterations": ("lp:iterations_total", {"phase": "prefill"}),
    "decode_iterations": ("lp:iterations_total", {"phase": "decode"}),
    "mixed_iterations": ("lp:iterations_total", {"phase": "mixed"}),
}
_STAT_GAUGES = {
    "num_running": "lp:num_requests_running",
    "num_waiting": "lp:num_requests_waiting",
    "kv_usage": "lp:kv_cache_usage_perc",
    "kv_blocks_free": "lp:kv_cache_blocks_free",
    "expert_bytes_per_token": "lp:expert_weight_bytes_per_token",
    "energy_per_token": "lp:gpu_energy_joules_per_token",
}
DESCRIPTIONS = {
    "lp:time_to_first_token_seconds": "Time from request arrival to its first generated token",
    "lp:inter_token_latency_seconds": "Time between consecutive generated tokens of a request",
    "lp:e2e_request_latency_seconds": "Time from request arrival to its last token",
    "lp:request_queue_time_seconds": "Time from request arrival until the engine first schedules it",
    "lp:prompt_tokens_total": "Prompt tokens processed",
    "lp:generation_tokens_total": "Tokens generated",
    "lp:expert_weight_bytes_total": "Bytes of MoE expert weights read by the engine",
    "lp:gpu_energy_joules_total": "Energy of the engine's GPUs since it started (NVML; stays 0 on CPU)",
    "lp:num_preemptions_total": "Requests preempted for lack of KV cache",
    "lp:prefix_cache_queries_total": "Prompt tokens looked up in the prefix cache (once per request)",
    "lp:prefix_cache_hits_total": "Prompt tokens found in the prefix cache: their KV was reused, not computed",
    "lp:iterations_total": "Engine iterations by schedule phase (prefill, decode, mixed)",
    "lp:request_success_total": "Requests finished, by finish reason",
    "lp:request_aborted_total": "Requests aborted because the client cancelled or disconnected",
    "lp:request_rejected_total": "Requests refused as invalid (bad input, over a limit) before generating",
    "lp:num_requests_running": "Requests being processed by the engine",
    "lp:num_requests_waiting": "Requests waiting in the engine's queue",
    "lp:kv_cache_usage_perc": "Fraction of KV cache blocks in use (0..1)",
    "lp:kv_cache_blocks_free": "Free KV cache blocks",
    "lp:expert_weight_bytes_per_token": "Expert weight bytes read per prompt or generated token, since the engine started",
    "lp:gpu_energy_joules_per_token": "GPU energy per prompt or generated token, since the engine started (NVML; stays 0 on CPU)",
    "lp:prefill_layers_per_iteration": "Layers crossed by prefill rows in an iteration, summed over its prefill batches",
    "lp:step_time_predicted_seconds": "The cost model's predicted time of the last iteration (tbt_slo_ms engines)",
    "lp:step_time_measured_seconds": "Measured wall time of the last iteration",
    "lp:step_time_measured_over_predicted": "Measured / predicted iteration time (tbt_slo_ms engines)",
}


FINISH_REASONS = ("stop", "length")


class ServingMetrics:
    """Owns the metric families of one model instance."""

    def __init__(self, pb_utils: ModuleType, labels: dict[str, str]) -> None:
        self._family_cls = pb_utils.MetricFamily
        self._families: dict[str, Any] = {}
        self._labels = labels
        hist, counter, gauge = self._family_cls.HISTOGRAM, self._family_cls.COUNTER, self._family_cls.GAUGE
        self._ttft = self._metric("lp:time_to_first_token_seconds", hist, buckets=LATENCY_BUCKETS)
        self._itl = self._metric("lp:inter_token_latency_seconds", hist, buckets=TOKEN_LATENCY_BUCKETS)
        self._e2e = self._metric("lp:e2e_request_latency_seconds", hist, buckets=LATENCY_BUCKETS)
        self._queue = self._metric("lp:request_queue_time_seconds", hist, buckets=LATENCY_BUCKETS)
        self._aborted = self._metric("lp:request_aborted_total", counter)
        self._rejected = self._metric("lp:request_rejected_total", counter)
        self._success = {r: self._metric("lp:request_success_total", counter, {"finish_reason": r})
                         for r in FINISH_REASONS}
        self._stat_counters = {f: self._metric(n, counter, extra) for f, (n, extra) in STAT_COUNTERS.items()}
        self._stat_gauges = {f: self._metric(n, gauge) for f, n in _STAT_GAUGES.items()}
        self._last: dict[str, float] = {f: 0 for f in STAT_COUNTERS}
        self._prefill_layers = self._metric("lp:prefill_layers_per_iteration", hist, buckets=PREFILL_LAYER_BUCKETS)
        self._predicted = self._metric("lp:step_time_predicted_seconds", gauge)
        self._measured = self._metric("lp:step_time_measured_seconds", gauge)
        self._ratio = self._metric("lp:step_time_measured_over_predicted", hist, buckets=PREDICTION_RATIO_BUCKETS)
        self._iterations = 0

    def _metric(self, name: str, kind: Any, extra: dict[str, str] | None = None, **kw: Any) -> Any:
        """One labelled metric; families are shared by name (e.g. iterations_total per phase)."""
        if name not in self._families:
            self._families[name] = self._family_cls(name=name, description=DESCRIPTIONS[name], kind=kind)
        return self._families[name].Metric(labels={**self._labels, **(extra or {})}, **kw)

    def first_token(self, ttft_seconds: float, queue_seconds: float) -> None:
        self._ttft.observe(ttft_seconds)
        self._queue.observe(queue_seconds)

    def inter_token(self, gap_seconds: float, tokens: int) -> None:
        """A step that delivered several tokens at once counts as that many equal gaps."""
        for _ in range(tokens):
            self._itl.observe(gap_seconds / tokens)

    def request_finished(self, e2e_seconds: float, finish_reason: str) -> None:
        self._e2e.observe(e2e_seconds)
        if finish_reason in self._success:
            self._success[finish_reason].increment(1)

    def request_aborted(self) -> None:
        self._aborted.increment(1)

    def request_rejected(self) -> None:
        """Triton's own nv_inference_request_success counts these too: the model answered them."""
        self._rejected.increment(1)

    def engine_stats(self, stats: EngineStats) -> None:
        if stats.iterations > self._iterations:  # a step ran since the last call
            self._iterations = stats.iterations
            self._step(stats)
        for field, counter in self._stat_counters.items():
            value = getattr(stats, field)
            if value is None:  # energy on a machine without NVML
                continue
            if value > self._last[field]:
                counter.increment(value - self._last[field])
            self._last[field] = value
        for field, gauge in self._stat_gauges.items():
            value = getattr(stats, field)
            if value is not None:
                gauge.set(float(value))

    def _step(self, stats: EngineStats) -> None:
        """The last iteration's prefill layers, and its predicted against measured time."""
        if stats.last_prefill_layers:
            self._prefill_layers.observe(stats.last_prefill_layers)
        self._measured.set(stats.measured_step_s)
        if stats.predicted_step_s:
            self._predicted.set(stats.predicted_step_s)
            self._ratio.observe(stats.measured_step_s / stats.predicted_step_s)

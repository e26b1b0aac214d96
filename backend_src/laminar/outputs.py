"""What the engine reports: per-request deltas, finished completions, and engine counters."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenLogprobs:
    """A sampled token's log-probability (see laminar.logprobs for which distribution)."""

    token_id: int
    logprob: float
    rank: int                       # 1 + the number of tokens strictly more likely than it
    top: list[tuple[int, float]]    # (token id, logprob) of the most likely tokens, best first


@dataclass
class RequestOutput:
    """A request's progress in one step: the tokens and text that are new since the last one."""

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool                     # the request's last output (every sample of it has finished)
    finish_reason: str | None          # "stop" | "length" once this sample has finished
    num_prompt_tokens: int
    num_output_tokens: int
    arrival_time: float
    scheduled_time: float | None       # first admission into a prefill batch (queue time ends)
    first_token_time: float | None
    logprobs: list[TokenLogprobs] | None = None  # one per new token when the request asked for them
    num_cached_tokens: int = 0         # prompt tokens whose KV came from the prefix cache (first admission)
    index: int = 0                     # the sample (n > 1) this output belongs to
    prompt_logprobs: list[TokenLogprobs | None] | None = None  # on a sample's first output, when asked
    error: str | None = None           # the request failed before it ran (an invalid grammar); finished


@dataclass
class CompletionOutput:
    """A finished generation, as LLM.generate returns it."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprobs] | None = None  # one per token when SamplingParams.logprobs is set
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


@dataclass
class SegmentRecord:
    """One prefill batch's part of a step: its requests, tokens and the layers they crossed."""

    batch_id: int
    request_ids: list[str]
    tokens: int
    layers: range


@dataclass
class StepRecord:
    """What one iteration ran; tests check the scheduler's invariants against these."""

    decode_ids: list[str]
    segments: list[SegmentRecord]
    sampled_ids: list[str]
    experts_touched: int
    cpu_s: float       # host time outside the model's forward: scheduling, input preparation, outputs
    total_s: float     # wall time of the whole step, the GPU work included
    predicted_s: float | None = None  # the cost model's prediction (when the engine has one)
    device_idle_s: float | None = None  # the device waiting for the host within the step (CUDA; device_idle)


@dataclass
class EngineStats:
    """Cumulative counters plus the current queue and KV-cache state.

    expert_bytes counts, for every MoE layer run in an iteration, the distinct
    experts its tokens touched times the bytes of one expert as held: the weight
    traffic that layered prefill reduces (MXFP4 calls past the 16-bit write-out
    threshold, kernels.moe_mxfp4, move more, uncounted: README, expert-traffic accounting).
    """

    iterations: int = 0
    mixed_iterations: int = 0      # decode tokens and prefill tokens together
    decode_iterations: int = 0     # decode tokens only
    prefill_iterations: int = 0    # prefill tokens only
    prompt_tokens: int = 0         # prompt (or recomputed) tokens that finished all layers; cached ones are not
    generated_tokens: int = 0
    expert_bytes_total: int = 0
    expert_bytes_last_step: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache (at first admission)
    prefix_cache_hits: int = 0     # of them, tokens found (their KV was reused, not computed)
    num_running: int = 0
    num_waiting: int = 0
    kv_blocks_total: int = 0
    kv_blocks_free: int = 0
    energy_joules: float | None = None  # GPU energy since the engine started (NVML); None on CPU
    last_prefill_layers: int = 0           # the last step: layers crossed by prefill rows, summed over segments
    predicted_step_s: float | None = None  # the last step: the cost model's prediction (None without one)
    measured_step_s: float = 0.0           # the last step: its wall time

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.kv_blocks_free / self.kv_blocks_total if self.kv_blocks_total else 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    @property
    def expert_bytes_per_token(self) -> float:
        return self.expert_bytes_total / self.tokens if self.tokens else 0.0

    @property
    def energy_per_token(self) -> float | None:
        """Joules per (prompt + generated) token."""
        if self.energy_joules is None or not self.tokens:
            return None
        return self.energy_joules / self.tokens

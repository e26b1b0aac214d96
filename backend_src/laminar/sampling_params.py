"""Per-request sampling parameters, validated up front so the engine never sees bad values."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# The OpenAI API's top_logprobs limit; a bound keeps one request from making every step's top-k slow.
MAX_LOGPROBS = 20
GREEDY_TEMPERATURE = 1e-5
MAX_N = 64            # samples per request (each is a sequence in the batch)
MAX_LOGIT_BIAS = 100.0
# structured_outputs kinds -> the JSON types their value may have (exactly one kind per request).
STRUCTURED_KINDS: dict[str, tuple[type, ...]] = {
    "json": (dict, str), "json_object": (bool,), "regex": (str,), "choice": (list,), "grammar": (str,),
    "structural_tag": (dict, str),
}


def _is_int(value: Any) -> bool:
    """True for real ints; bool is excluded because `max_tokens=True` is a client bug."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


@dataclass
class SamplingParams:
    """How one request is decoded.

    Defaults mirror vLLM so clients can reuse their requests:
      max_tokens=16: new tokens generated at most (>= 1).
      temperature=1.0: softmax temperature; 0 means greedy (argmax).
      top_k=0: keep only the k most likely tokens; 0 or -1 disables it.
      top_p=1.0: nucleus filtering, keep the smallest set with mass >= top_p; in (0, 1].
      min_p=0.0: drop tokens whose probability is below min_p * max probability; in [0, 1].
      seed=None: a seeded request draws from its own generator, so its output is
        reproducible regardless of which other requests share its batch.
      stop=[]: strings that end generation; they are not included in the output.
        A single string is accepted and wrapped in a list.
      stop_token_ids=[]: token ids that end generation (in addition to EOS).
      ignore_eos=False: keep generating past EOS tokens (benchmarks use this).
      skip_special_tokens=True: leave special tokens out of the detokenized text.
      presence_penalty=0.0: subtracted once from the logit of every token already in the
        output; in [-2, 2], positive values push towards new tokens.
      frequency_penalty=0.0: subtracted from a token's logit once per occurrence in the
        output; in [-2, 2].
      repetition_penalty=1.0: tokens seen in the prompt or output have positive logits divided
        and negative logits multiplied by it; > 0, values above 1 discourage repeats.
      logprobs=None: return each sampled token's log-probability, its rank and the `logprobs`
        most likely alternatives (0 = the sampled token only); in [0, 20].
      n=1: independent samples of the same prompt; the prompt is computed once and its KV
        blocks are shared; sample i draws from seed + i when a seed is given.
      logit_bias=None: {token id: bias in [-100, 100]} added to the logits before sampling.
      prompt_logprobs=None: the log-probability of every prompt token (after the first) under
        the model, with its rank and the k most likely alternatives; in [0, 20].
      structured_outputs=None: constrain the output to exactly one of {"json": schema},
        {"json_object": true}, {"regex": str}, {"choice": [str, ...]}, {"grammar": EBNF str},
        {"structural_tag": object}; compiled by laminar.structured_output.

    Two fields say when the request's prompt is admitted, not how it is decoded; they ride here
    because every surface (Triton's sampling_parameters, the OpenAI extra body) already carries
    this object. Each needs the engine's prefill_order that reads it (laminar.policies.order):
      priority=0: prefill_order "priority" admits lower values first (vLLM's convention), ties
        in arrival order.
      ttft_slo_ms=None: prefill_order "deadline": the request's own time-to-first-token budget,
        in ms (None: the engine's ttft_slo_ms); its deadline is arrival + budget.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None
    n: int = 1
    logit_bias: dict[int, float] | None = None
    prompt_logprobs: int | None = None
    structured_outputs: dict[str, Any] | None = None
    priority: int = 0
    ttft_slo_ms: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        self._validate()
        self.temperature = float(self.temperature)
        self.top_p = float(self.top_p)
        self.min_p = float(self.min_p)
        self.presence_penalty = float(self.presence_penalty)
        self.frequency_penalty = float(self.frequency_penalty)
        self.repetition_penalty = float(self.repetition_penalty)
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        if self.ttft_slo_ms is not None:
            self.ttft_slo_ms = float(self.ttft_slo_ms)

    def _validate(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not _is_number(self.temperature) or not self.temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be an int >= -1 (0 or -1 disables it), got {self.top_k!r}")
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not _is_number(self.min_p) or not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be a number in [0, 1], got {self.min_p!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if not isinstance(self.stop, (list, tuple)) or not all(
            isinstance(s, str) and s for s in self.stop
        ):
            raise ValueError(f"stop must be a string or a list of non-empty strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
            _is_int(t) and t >= 0 for t in self.stop_token_ids
        ):
            raise ValueError(
                f"stop_token_ids must be a list of non-negative ints, got {self.stop_token_ids!r}"
            )
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        if not isinstance(self.skip_special_tokens, bool):
            raise ValueError(f"skip_special_tokens must be a bool, got {self.skip_special_tokens!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be a number in [-2, 2], got {value!r}")
        if not _is_number(self.repetition_penalty) or not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be a number > 0, got {self.repetition_penalty!r}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be an int in [0, {MAX_LOGPROBS}] or None, got {self.logprobs!r}")
        if not _is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise ValueError(f"n must be an int in [1, {MAX_N}], got {self.n!r}")
        if self.prompt_logprobs is not None and (
                not _is_int(self.prompt_logprobs) or not 0 <= self.prompt_logprobs <= MAX_LOGPROBS):
            raise ValueError(
                f"prompt_logprobs must be an int in [0, {MAX_LOGPROBS}] or None, got {self.prompt_logprobs!r}")
        _check_logit_bias(self.logit_bias)
        _check_structured_outputs(self.structured_outputs)
        if not _is_int(self.priority):
            raise ValueError(f"priority must be an int, got {self.priority!r}")
        budget = self.ttft_slo_ms
        if budget is not None and not (_is_number(budget) and 0 < budget < 1e9):
            raise ValueError(f"ttft_slo_ms must be a positive number of milliseconds or None, got {budget!r}")

    def for_sample(self, index: int) -> SamplingParams:
        """Sample `index` of an n > 1 request: its own seed stream, and the prompt's logprobs
        reported once (by sample 0)."""
        seed = None if self.seed is None else self.seed + index
        return replace(self, n=1, seed=seed, prompt_logprobs=self.prompt_logprobs if index == 0 else None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        """Builds params from a request's JSON object, rejecting keys we do not know
        (a silently ignored typo like `temprature` would be worse than an error)."""
        if not isinstance(d, dict):
            raise ValueError(f"sampling parameters must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown sampling parameter(s): {', '.join(map(str, unknown))}")
        return cls(**d)

    @property
    def penalized(self) -> bool:
        """Rows without penalties skip the token-count work in the sampler."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def greedy(self) -> bool:
        """Greedy rows skip filtering and random draws entirely. Temperatures below GREEDY_TEMPERATURE
        count as 0: dividing logits by ~0 overflows to inf."""
        return self.temperature < GREEDY_TEMPERATURE


def _check_logit_bias(bias: Any) -> None:
    """Keys may be ints or decimal strings (JSON object keys are strings)."""
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise ValueError(f"logit_bias must be an object of token id -> bias, got {bias!r}")
    for key, value in bias.items():
        if not (_is_int(key) or (isinstance(key, str) and key.strip().isdigit())) or int(key) < 0:
            raise ValueError(f"logit_bias keys must be token ids >= 0, got {key!r}")
        if not _is_number(value) or not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias[{key!r}] must be a number in [-100, 100], got {value!r}")


def _check_structured_outputs(spec: Any) -> None:
    """The shape only; whether the schema, regex or grammar itself is valid is found when it compiles."""
    if spec is None:
        return
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"structured_outputs must be an object with exactly one of "
                         f"{', '.join(STRUCTURED_KINDS)}, got {spec!r}"[:300])
    kind, value = next(iter(spec.items()))
    if kind not in STRUCTURED_KINDS:
        raise ValueError(f"structured_outputs: unknown kind {kind!r} (one of {', '.join(STRUCTURED_KINDS)})")
    if not isinstance(value, STRUCTURED_KINDS[kind]):
        names = " or ".join(t.__name__ for t in STRUCTURED_KINDS[kind])
        raise ValueError(f"structured_outputs.{kind} must be a {names}, got {type(value).__name__}")
    if kind == "json_object" and value is not True:
        raise ValueError("structured_outputs.json_object must be true")
    if kind == "choice" and (not value or not all(isinstance(c, str) for c in value)):
        raise ValueError("structured_outputs.choice must be a non-empty list of strings")

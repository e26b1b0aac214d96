"""Per-request sampling parameters, validated up front so the engine never sees bad values."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# The OpenAI API's top_logprobs limit; a bound keeps one request from making every step's top-k slow.
MAX_LOGPROBS = 20
GREEDY_TEMPERATURE = 1e-5


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

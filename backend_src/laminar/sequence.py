"""The engine's view of one request: tokens, KV blocks and progress."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from laminar.sampling_params import SamplingParams
from laminar.tokenizer import IncrementalDetokenizer

if TYPE_CHECKING:
    from laminar.outputs import TokenLogprobs
    from laminar.structured_output import GrammarState


def pending_token(row: int) -> int:
    """The placeholder of a token sampled on the device whose value the host has not read yet:
    -1 - its row in that step's sampled tokens (laminar.step_inputs.StepInputs.token_ids)."""
    return -1 - row


class Status(enum.Enum):
    WAITING = "waiting"        # not admitted, or preempted: it holds no KV blocks
    PREFILLING = "prefilling"  # admitted; prompt tokens still to compute
    DECODING = "decoding"      # exactly one uncomputed token (the last sampled)
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Tokens [0, num_computed) have KV in every layer; the rest are computed next.

    A decode is the case of exactly one uncomputed token, so prefill, decode and
    recompute after preemption share one rule: compute what is left, and sample
    a token when nothing is left. With prefix caching, admission starts num_computed
    at the tokens whose KV another request already computed (block_manager).

    With asynchronous scheduling the last output token may be pending (pending_token): sampled
    on the device by the step in flight, planned with as if known, resolved by the engine once
    the step's tokens reach the host. Only the last token is ever pending.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    detokenizer: IncrementalDetokenizer | None  # None for models without a tokenizer
    arrival_time: float
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0
    status: Status = Status.WAITING
    finish_reason: str | None = None
    first_token_time: float | None = None
    admitted_time: float | None = None
    num_cached_tokens: int | None = None  # prompt tokens found in the prefix cache at first admission
    block_hashes: list[bytes] = field(default_factory=list)  # chain hashes of its first full blocks
    num_registered_blocks: int = 0  # blocks of block_table already offered to the prefix cache
    index: int = 0  # which sample of its request (n > 1 forks samples 1.. from sample 0)
    grammar: GrammarState | None = None  # structured outputs: the matcher over output_token_ids
    prompt_logprobs: list[TokenLogprobs] = field(default_factory=list)  # prompt tokens 1.. so far

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed(self) -> int:
        return self.num_tokens - self.num_computed

    @property
    def num_pending(self) -> int:
        """1 while the last output token is a placeholder for a token still on the device, else 0."""
        return int(bool(self.output_token_ids) and self.output_token_ids[-1] < 0)

    def token_ids(self, start: int, stop: int) -> list[int]:
        """Tokens [start, stop) of prompt + output, without concatenating the whole history."""
        p = self.num_prompt_tokens
        return self.prompt_token_ids[start:min(stop, p)] + self.output_token_ids[max(start - p, 0):max(stop - p, 0)]

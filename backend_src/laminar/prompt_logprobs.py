"""Prompt logprobs: the model's log-probability of each prompt token given the tokens before it.

They come from the logits of the prompt rows themselves, taken in the step where a prefill
segment crosses the last layer: those rows are in that step's last-layer output in both schedule
modes (a layered batch carries all its rows to its last layer group), so the prompt is not run
again. Row p predicts prompt token p + 1; the last prompt row is the one sampled from, so it is
not needed here, and the first prompt token has no logprob (None, as in vLLM).

A request that asks for them skips the prefix cache (as vLLM does): a cached prefix has no
logits. Entries already collected are not collected again when a preempted request recomputes
its prompt. The distribution is the raw model one (log-softmax of the logits, fp32): no grammar,
bias, penalty or temperature applies to a prompt.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from laminar.logprobs import token_logprobs
from laminar.sequence import Sequence
from laminar.step_plan import StepPlan


@dataclass(frozen=True)
class PromptSpan:
    """Rows of the step's last-layer output that predict prompt tokens first + 1 ... of seq."""

    seq: Sequence
    first: int        # prompt position of the first row
    rows: range       # rows of the last layer's output (before logits_rows selects them)


def wants_prompt_logprobs(seq: Sequence) -> bool:
    return seq.params.prompt_logprobs is not None


def prompt_spans(plan: StepPlan) -> list[PromptSpan]:
    """The step's prompt rows whose logprobs are still missing, where the last layer's output holds
    them (StepPlan.last_layer_segments)."""
    spans = []
    for seg, offset in plan.last_layer_segments():
        starts = itertools.accumulate((c.length for c in seg.chunks), initial=offset)
        for chunk, row0 in zip(seg.chunks, starts):
            seq = chunk.seq
            if not wants_prompt_logprobs(seq):
                continue
            first = max(chunk.start, len(seq.prompt_logprobs))
            stop = min(chunk.start + chunk.length, seq.num_prompt_tokens - 1)
            if first < stop:
                spans.append(PromptSpan(seq, first, range(row0 + first - chunk.start, row0 + stop - chunk.start)))
    return spans


def collect_prompt_logprobs(logits: Tensor, spans: list[PromptSpan]) -> None:
    """Appends each span's entries to its sequence; logits holds the spans' rows in order."""
    if not spans:
        return
    targets = [t for s in spans for t in s.seq.prompt_token_ids[s.first + 1: s.first + 1 + len(s.rows)]]
    ks = [s.seq.params.prompt_logprobs for s in spans for _ in s.rows]
    tokens = torch.tensor(targets, dtype=torch.int64).to(logits.device, non_blocking=True)
    entries = iter(token_logprobs(logits.float().log_softmax(dim=-1), tokens, ks))
    for span in spans:
        span.seq.prompt_logprobs.extend(itertools.islice(entries, len(span.rows)))

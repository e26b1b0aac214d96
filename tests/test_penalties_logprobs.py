"""Penalties and logprobs of the batched Sampler against plain per-row torch references of their
definitions (vLLM's semantics; laminar.penalties and laminar.logprobs document them)."""
from __future__ import annotations

import random

import pytest
import torch

from laminar import LLM
from laminar.sampler import Sampler
from laminar.sampling_params import SamplingParams

VOCAB = 50


def reference_penalties(logits: torch.Tensor, params: SamplingParams, prompt: list[int], output: list[int]) -> torch.Tensor:
    """One row, token by token: repetition over prompt + output, then frequency, then presence."""
    out = logits.clone().float()
    for token in set(prompt) | set(output):
        value = out[token].item()
        out[token] = value / params.repetition_penalty if value > 0 else value * params.repetition_penalty
    for token in set(output):
        out[token] -= params.frequency_penalty * output.count(token) + params.presence_penalty
    return out


def reference_processed(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature then top-k (the only filter these tests use) on an already penalised row."""
    scaled = logits / params.temperature
    if params.top_k > 0:
        kth = scaled.topk(params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return scaled


def histories(n: int, rng: random.Random) -> list[tuple[list[int], list[int]]]:
    return [([rng.randrange(VOCAB) for _ in range(rng.randrange(1, 12))],
             [rng.randrange(VOCAB) for _ in range(rng.randrange(0, 20))]) for _ in range(n)]


PENALTIES = [
    {},
    {"repetition_penalty": 1.7},
    {"repetition_penalty": 0.6},
    {"frequency_penalty": 0.9},
    {"presence_penalty": -1.5},
    {"repetition_penalty": 1.3, "frequency_penalty": 0.4, "presence_penalty": 1.1},
]


def test_greedy_penalties_and_logprobs_match_the_reference() -> None:
    rng = random.Random(0)
    logits = torch.randn(len(PENALTIES), VOCAB, generator=torch.Generator().manual_seed(1)) * 3
    params = [SamplingParams(temperature=0.0, logprobs=5, **kw) for kw in PENALTIES]
    hist = histories(len(params), rng)
    out = Sampler()(logits, params, [None] * len(params), hist)
    for i, (p, (prompt, output)) in enumerate(zip(params, hist)):
        want = reference_penalties(logits[i], p, prompt, output)
        assert out.tokens[i].item() == want.argmax().item()
        ref = want.log_softmax(-1)
        lp = out.logprobs[i]
        assert lp.token_id == out.tokens[i].item() and lp.rank == 1
        assert lp.logprob == pytest.approx(ref[lp.token_id].item(), abs=1e-5)
        assert [t for t, _ in lp.top] == ref.topk(5).indices.tolist()
        assert [v for _, v in lp.top] == pytest.approx(ref.topk(5).values.tolist(), abs=1e-5)
    # The penalties changed something: without them the logprobs differ for every penalised row.
    plain = Sampler()(logits, [SamplingParams(temperature=0.0, logprobs=0)] * len(params), [None] * len(params))
    for i in range(1, len(params)):
        assert plain.logprobs[i].logprob != pytest.approx(out.logprobs[i].logprob, abs=1e-4) or \
            plain.tokens[i] != out.tokens[i]


def test_sampled_rows_report_the_processed_distribution() -> None:
    rng = random.Random(3)
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(4)).repeat(400, 1) * 2
    p = SamplingParams(temperature=0.7, top_k=10, frequency_penalty=0.5, repetition_penalty=1.2, logprobs=3)
    hist = histories(1, rng) * 400
    out = Sampler()(logits, [p] * 400, [None] * 400, hist)
    ref = reference_processed(reference_penalties(logits[0], p, *hist[0]), p).log_softmax(-1)
    ranks = ref.argsort(descending=True).argsort() + 1
    assert len(set(out.tokens.tolist())) > 1  # sampled, not argmax
    for token, lp in zip(out.tokens.tolist(), out.logprobs):
        assert lp.token_id == token and ref[token] > float("-inf")  # never a filtered token
        assert lp.logprob == pytest.approx(ref[token].item(), abs=1e-5)
        assert lp.rank == ranks[token].item()
        assert [t for t, _ in lp.top] == ref.topk(3).indices.tolist()


def test_rows_without_logprobs_or_penalties_are_untouched() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(7)) * 3
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0, presence_penalty=2.0, logprobs=0),
              SamplingParams(temperature=0.0)]
    hist = [([1], [int(row.argmax())]) for row in logits]
    out = Sampler()(logits, params, [None] * 3, hist)
    assert out.logprobs[0] is None and out.logprobs[2] is None and out.logprobs[1].top == []
    assert out.tokens[0] == logits[0].argmax() and out.tokens[2] == logits[2].argmax()
    assert out.tokens[1] != logits[1].argmax()  # its argmax, now penalised by 2, lost the lead
    with pytest.raises(ValueError, match="history"):
        Sampler()(logits, params, [None] * 3)


def test_llm_generate_returns_logprobs_of_its_tokens(moe_checkpoint) -> None:
    llm = LLM(model=str(moe_checkpoint), device="cpu")
    prompt = [5, 17, 99, 3]
    (out,) = llm.generate([prompt], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, logprobs=2))
    assert [lp.token_id for lp in out.logprobs] == out.token_ids
    assert all(lp.rank == 1 and len(lp.top) == 2 and lp.top[0][0] == lp.token_id for lp in out.logprobs)
    (plain,) = llm.generate([prompt], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    assert plain.logprobs is None and plain.token_ids == out.token_ids

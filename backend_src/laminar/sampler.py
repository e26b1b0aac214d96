"""Batched token sampling: penalties, greedy, temperature, top-k / top-p / min-p, per-request
seeds, and the sampled tokens' logprobs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from laminar.host_copy import list_to_device
from laminar.logit_bias import apply_logit_bias
from laminar.logprobs import gather_logprobs
from laminar.outputs import TokenLogprobs
from laminar.penalties import TokenHistory, apply_penalties
from laminar.sampling_params import SamplingParams


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """One generator per seeded request, kept by the engine for the request's lifetime, so
    the request's random stream depends only on its seed and its own step count."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def _filter_logits(logits: Tensor, params: list[SamplingParams]) -> Tensor:
    """Sets filtered-out entries to -inf; rows of `logits` are already temperature-scaled.

    Top-k and top-p are decided in sorted order and scattered back to vocabulary order, so
    each row keeps exactly the tokens its own parameters allow. Min-p compares against the
    row maximum, which renormalisation after top-k/top-p does not change.
    """
    n, vocab = logits.shape
    device = logits.device
    use_top_k = any(0 < p.top_k < vocab for p in params)
    use_top_p = any(p.top_p < 1.0 for p in params)
    if use_top_k or use_top_p:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        positions = torch.arange(vocab, device=device).expand(n, vocab)
        ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
        remove = positions >= list_to_device(ks, torch.long, device).unsqueeze(1)
        if use_top_p:
            sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
            probs = sorted_logits.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs
            # Rows without top-p get +inf so cumsum rounding can never drop their tail.
            top_ps = [p.top_p if p.top_p < 1.0 else float("inf") for p in params]
            top_p = list_to_device(top_ps, probs.dtype, device).unsqueeze(1)
            # The most likely token always stays: a top_p that rounds to 0 would drop every token.
            remove |= (mass_before >= top_p) & (positions > 0)
        remove_vocab = torch.empty_like(remove).scatter_(1, order, remove)
        logits = logits.masked_fill(remove_vocab, float("-inf"))
    if any(p.min_p > 0.0 for p in params):
        min_ps = list_to_device([p.min_p for p in params], logits.dtype, device)
        # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p); log(0) = -inf keeps all.
        threshold = logits.amax(dim=-1, keepdim=True) + min_ps.log().unsqueeze(1)
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return logits


@dataclass
class SamplerOutput:
    tokens: Tensor                                   # [batch] sampled token ids
    logprobs: list[TokenLogprobs | None] | None      # per row, or None when no row asked


class Sampler:
    """Picks one token per row of a logits batch.

    Logit biases (laminar.logit_bias), then penalties (laminar.penalties) change the logits first,
    for greedy and sampled rows alike (a grammar's mask, laminar.structured_output, comes before).

    Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which equals a
    categorical draw but needs no cumulative sums or host syncs. Seeded rows draw their
    noise from their own generator, one draw of V values per call, in vocabulary order;
    unseeded rows share a single batched draw from the default generator.
    """

    def __call__(
        self,
        logits: Tensor,
        params: list[SamplingParams],
        generators: list[torch.Generator | None],
        histories: list[TokenHistory] | None = None,
    ) -> SamplerOutput:
        """histories: each row's (prompt, output) token ids; needed only when a row has penalties."""
        batch, vocab = logits.shape
        if len(params) != batch or len(generators) != batch:
            raise ValueError(
                f"got {batch} logits rows, {len(params)} params, {len(generators)} generators"
            )
        logits = apply_logit_bias(logits, params)
        if any(p.penalized for p in params):
            if histories is None or len(histories) != batch:
                raise ValueError("penalties need one token history per logits row")
            logits = apply_penalties(logits, params, histories)
        want_logprobs = any(p.logprobs is not None for p in params)
        tokens = logits.argmax(dim=-1)
        processed = logits
        rows = [i for i, p in enumerate(params) if not p.greedy]
        if rows:
            device = logits.device
            all_rows = len(rows) == batch
            row_index = None if all_rows else list_to_device(rows, torch.long, device)
            sub = logits if all_rows else logits.index_select(0, row_index)
            sub_params = [params[i] for i in rows]
            temps = list_to_device([p.temperature for p in sub_params], sub.dtype, device)
            sub = _filter_logits(sub.float() / temps.unsqueeze(1), sub_params)
            noise = self._exponential_noise(len(rows), vocab, [generators[i] for i in rows], device)
            sampled = sub.softmax(dim=-1).div_(noise).argmax(dim=-1)
            if all_rows:
                tokens, processed = sampled, sub
            else:
                tokens = tokens.index_copy_(0, row_index, sampled)
                if want_logprobs:
                    processed = logits.float().index_copy(0, row_index, sub)
        return SamplerOutput(tokens, gather_logprobs(processed, tokens, params) if want_logprobs else None)

    @staticmethod
    def _exponential_noise(
        n: int, vocab: int, generators: list[torch.Generator | None], device: torch.device
    ) -> Tensor:
        """Exp(1) noise [n, vocab]; clamped away from 0 so p / E never divides by zero."""
        noise = torch.empty(n, vocab, device=device, dtype=torch.float32)
        unseeded = [i for i, g in enumerate(generators) if g is None]
        if len(unseeded) == n:
            noise.exponential_()
        else:
            for i, gen in enumerate(generators):
                if gen is not None:
                    noise[i].exponential_(generator=gen)
            if unseeded:
                shared = torch.empty(len(unseeded), vocab, device=device).exponential_()
                noise[list_to_device(unseeded, torch.long, device)] = shared
        return noise.clamp_min_(torch.finfo(torch.float32).tiny)

"""Per-token log-probabilities of a sampled batch, as the OpenAI and vLLM APIs report them.

They are taken from the processed distribution, the one each token was actually drawn from:
after penalties, then (for sampled rows) temperature and top-k / top-p / min-p, whose dropped
tokens get -inf. This is vLLM's `processed_logprobs` mode (and what vLLM V0 returned); vLLM
V1's default, `raw_logprobs`, would report the model's distribution before any processing.
Greedy rows are argmax rows, so only their penalties apply (vLLM's convention too).
"""
from __future__ import annotations

import torch
from torch import Tensor

from laminar.host_copy import list_to_device
from laminar.outputs import TokenLogprobs
from laminar.sampling_params import SamplingParams


def gather_logprobs(processed: Tensor, tokens: Tensor, params: list[SamplingParams]) -> list[TokenLogprobs | None]:
    """One entry per row: None where the request asked for none. A single host transfer."""
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    row_index = list_to_device(rows, torch.long, processed.device)
    logprobs = processed.index_select(0, row_index).float().log_softmax(dim=-1)
    entries = token_logprobs(logprobs, tokens.index_select(0, row_index), [params[i].logprobs for i in rows])
    out: list[TokenLogprobs | None] = [None] * len(params)
    for i, entry in zip(rows, entries):
        out[i] = entry
    return out


def token_logprobs(logprobs: Tensor, tokens: Tensor, ks: list[int]) -> list[TokenLogprobs]:
    """Row i: tokens[i]'s logprob and rank in logprobs[i], and its ks[i] most likely tokens."""
    chosen = tokens.unsqueeze(1)
    chosen_logprob = logprobs.gather(1, chosen)
    ranks = (logprobs > chosen_logprob).sum(dim=-1) + 1
    top_logprobs, top_ids = logprobs.topk(max(ks), dim=-1)
    host = [t.tolist() for t in (chosen.squeeze(1), chosen_logprob.squeeze(1), ranks, top_ids, top_logprobs)]
    return [TokenLogprobs(token_id=token, logprob=logprob, rank=rank, top=list(zip(ids[:k], lps[:k])))
            for k, token, logprob, rank, ids, lps in zip(ks, *host)]

"""Repetition, frequency and presence penalties on a logits batch, as vLLM defines them.

  repetition_penalty r: every token in the prompt or the output so far has its logit l
    replaced by l / r if l > 0, else l * r (so r > 1 always makes it less likely);
  frequency_penalty f: l -= f * (times the token occurs in the output);
  presence_penalty p:  l -= p * (1 if the token occurs in the output else 0).

They are applied in that order, to the model's logits before temperature and filtering. The
token counts are built on the logits' device by one scatter per call over the penalised rows'
padded token ids: no per-request tensor work, and rows without penalties cost nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor

from laminar.host_copy import list_to_device
from laminar.sampling_params import SamplingParams

# A row's (prompt token ids, output token ids).
TokenHistory = tuple[list[int], list[int]]


def token_counts(token_lists: list[list[int]], vocab: int, device: torch.device) -> Tensor:
    """[len(token_lists), vocab] float32 counts of each token id per list."""
    width = max((len(ids) for ids in token_lists), default=0)
    # Padding goes to an extra bucket `vocab`, dropped at the end.
    padded = [ids + [vocab] * (width - len(ids)) for ids in token_lists]
    ids = torch.tensor(padded, dtype=torch.int64).reshape(len(token_lists), width).to(device, non_blocking=True)
    counts = torch.zeros(len(token_lists), vocab + 1, device=device, dtype=torch.float32)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab]


def apply_penalties(logits: Tensor, params: list[SamplingParams], histories: list[TokenHistory]) -> Tensor:
    """Float32 logits with each row's penalties applied; returns `logits` itself when no row has any."""
    rows = [i for i, p in enumerate(params) if p.penalized]
    if not rows:
        return logits
    device, vocab = logits.device, logits.shape[1]
    row_index = list_to_device(rows, torch.long, device)
    sub = logits.index_select(0, row_index).float()
    sub_params = [params[i] for i in rows]
    output_counts = token_counts([histories[i][1] for i in rows], vocab, device)
    in_output = output_counts > 0

    def column(values: list[float]) -> Tensor:
        return list_to_device(values, torch.float32, device).unsqueeze(1)

    if any(p.repetition_penalty != 1.0 for p in sub_params):
        seen = in_output | (token_counts([histories[i][0] for i in rows], vocab, device) > 0)
        rep = column([p.repetition_penalty for p in sub_params])
        sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)
    sub = sub - column([p.frequency_penalty for p in sub_params]) * output_counts
    sub = sub - column([p.presence_penalty for p in sub_params]) * in_output
    return logits.float().index_copy(0, row_index, sub)

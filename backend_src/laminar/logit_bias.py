"""OpenAI's logit_bias: per-request {token id: bias} added to the logits before penalties and sampling."""
from __future__ import annotations

import torch
from torch import Tensor

from laminar.sampling_params import SamplingParams


def apply_logit_bias(logits: Tensor, params: list[SamplingParams]) -> Tensor:
    """Float32 logits with every row's biases added (one scatter for the batch); `logits` itself
    when no row has any. A token masked to -inf (a grammar) stays masked."""
    entries = [(row, token, bias) for row, p in enumerate(params) for token, bias in (p.logit_bias or {}).items()]
    if not entries:
        return logits
    rows, tokens, biases = zip(*entries)
    device, vocab = logits.device, logits.shape[1]
    flat = torch.tensor([r * vocab + t for r, t in zip(rows, tokens)], dtype=torch.int64).to(device, non_blocking=True)
    values = torch.tensor(biases, dtype=torch.float32).to(device, non_blocking=True)
    return logits.float().flatten().index_add(0, flat, values).view_as(logits)

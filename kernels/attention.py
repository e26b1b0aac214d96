"""paged_attention entry point: flash-attn or FlashInfer where installed, switched on (the
engine's flash_attn / flashinfer arguments) and able to serve the batch; otherwise decode-only
batches take the split-K kernel, any other mix the varlen one."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .attention_decode import decode_attention
from .attention_prefill import prefill_attention
from .flash import flash_can_serve, flash_paged_attention
from .flashinfer import flashinfer_can_serve, flashinfer_paged_attention

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    sinks: torch.Tensor | None = None, window: int = 0, flash_attn: bool = True, flashinfer: bool = True,
) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its paged context (keys already stored).

    `window` > 0 keeps keys with position > query position - window; `sinks` (fp32
    [num_q_heads]) adds one logit per head to the softmax denominator only. Both as in
    laminar.ops.torch_ops.paged_attention; window is a per-layer constant, so no host sync.
    flash_attn / flashinfer False keep those libraries off even where they could serve.
    """
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if q.shape[0] == 0 or meta.num_seqs == 0 or meta.max_query_len == 0:
        return out
    if flash_attn and flash_can_serve(q, k_cache, sinks):
        return flash_paged_attention(q, k_cache, v_cache, meta, scale, window)
    if flashinfer and flashinfer_can_serve(q, meta, sinks):
        return flashinfer_paged_attention(q, k_cache, v_cache, meta, scale, out, window)
    if meta.max_query_len == 1:
        return decode_attention(q, k_cache, v_cache, meta, scale, out, sinks, window)
    return prefill_attention(q, k_cache, v_cache, meta, scale, out, sinks, window)

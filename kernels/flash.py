"""flash-attn's paged varlen attention, used instead of our kernels where it can serve the batch.

Upstream flash-attn 2 reads a paged cache only when the page (our KV block) holds a multiple of
256 tokens, and computes in fp16/bf16 only; it has a sliding window but no attention sinks.
Anything else stays on our Triton kernels.
The engine's flash_attn argument (LAMINAR_FLASH_ATTN=0) turns it off.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

try:
    from flash_attn import flash_attn_varlen_func
except ImportError:  # not installed (the default here): our kernels serve every batch
    flash_attn_varlen_func = None

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata

PAGE_MULTIPLE = 256


def flash_can_serve(q: torch.Tensor, k_cache: torch.Tensor, sinks: torch.Tensor | None = None) -> bool:
    return (
        flash_attn_varlen_func is not None
        and sinks is None
        and q.dtype in (torch.float16, torch.bfloat16)
        and k_cache.shape[1] % PAGE_MULTIPLE == 0
    )


def flash_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    window: int = 0,
) -> torch.Tensor:
    """Our metadata in flash-attn's terms: key prefix sums from the context lengths; its causal
    mask is aligned bottom-right, so queries sit at the end of their context as ours do. Its
    window (left, right) counts keys besides the query's own: our window W is (W - 1, 0)."""
    cu_seqlens_k = torch.zeros(meta.num_seqs + 1, dtype=torch.int32, device=q.device)
    torch.cumsum(meta.seq_lens, 0, out=cu_seqlens_k[1:])
    return flash_attn_varlen_func(
        q, k_cache, v_cache, meta.query_start_loc, cu_seqlens_k, meta.max_query_len, meta.max_seq_len,
        softmax_scale=scale, causal=True, window_size=(window - 1, 0) if window > 0 else (-1, -1),
        block_table=meta.block_tables,
    )

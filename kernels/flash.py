"""flash-attn 2's paged varlen attention, used instead of our kernels where it can serve the batch.

Upstream flash-attn 2 reads a paged cache only when the page (our KV block) holds a multiple of
256 tokens, and computes in fp16/bf16 only; it has a sliding window but no attention sinks.
Anything else stays on our Triton kernels. Not installed by build.sh (it builds from source for
our torch); FlashAttention-4 (fa4.py) is its successor on Hopper and Blackwell.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .attention_libs import imported

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata

PAGE_MULTIPLE = 256


def varlen_func():
    """flash_attn_varlen_func, or None where flash-attn 2 is not installed (FlashAttention-4 alone
    installs a `flash_attn` namespace without it)."""
    module = imported("flash_attn")
    return getattr(module, "flash_attn_varlen_func", None)


def flash_can_serve(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata, sinks: torch.Tensor | None,
                    window: int) -> bool:
    return (
        sinks is None
        and q.dtype in (torch.float16, torch.bfloat16)
        and k_cache.shape[1] % PAGE_MULTIPLE == 0
        and varlen_func() is not None
    )


def flash_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor, sinks: torch.Tensor | None = None, window: int = 0,
) -> torch.Tensor:
    """Our metadata in flash-attn's terms: key prefix sums from the context lengths; its causal
    mask is aligned bottom-right, so queries sit at the end of their context as ours do. Its
    window (left, right) counts keys besides the query's own: our window W is (W - 1, 0)."""
    cu_seqlens_k = torch.zeros(meta.num_seqs + 1, dtype=torch.int32, device=q.device)
    torch.cumsum(meta.seq_lens, 0, out=cu_seqlens_k[1:])
    return varlen_func()(
        q, k_cache, v_cache, meta.query_start_loc, cu_seqlens_k, meta.max_query_len, meta.max_seq_len,
        softmax_scale=scale, causal=True, window_size=(window - 1, 0) if window > 0 else (-1, -1),
        block_table=meta.block_tables,
    )

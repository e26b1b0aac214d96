"""FlashAttention-4 (package flash-attn-4, module flash_attn.cute: CuTe DSL kernels, compiled on
first use per shape class, no CUDA build step) over our paged cache.

Its varlen forward reads a paged KV cache directly: our per-layer K and V caches [blocks, page,
Hk, D] are its (num_pages, page_size, Hk, D) layout, our block tables its page_table, our context
lengths its seqused_k, our query prefix sums its cu_seqlens_q. Its causal mask is aligned
bottom-right (each sequence's queries at the end of its context, as ours); window_size (left,
right) counts keys besides the query's own, so our window W is (W - 1, 0); learnable_sink is our
per-head sink logit. So it can serve every path, GPT-OSS's included, on sm90 (Hopper) and sm100+.
Pages that hold whole key tiles load by TMA; our 16-token pages take its gather path. The wiring
is tested on CPU against its documented semantics (tests/kernels/test_attention_libs.py); the
table lists it for a GPU only once perf/bench_kernels.py has measured it there.
Kept out of CUDA-graph capture: its first call per shape class compiles on the host.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .attention_libs import imported

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata

ARCHES = (9, 10, 11)  # compute capability majors its forward kernels are written for


def fa4_can_serve(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata, sinks: torch.Tensor | None,
                  window: int) -> bool:
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k_cache.dtype == q.dtype
        and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0
        and torch.cuda.get_device_capability(q.device)[0] in ARCHES
        and not torch.cuda.is_current_stream_capturing()
        and imported("fa4") is not None
    )


def fa4_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor, sinks: torch.Tensor | None = None, window: int = 0,
) -> torch.Tensor:
    """Our metadata in its terms (no copy of the cache); it allocates its own output."""
    result, _ = imported("fa4").flash_attn_varlen_func(
        q, k_cache, v_cache, cu_seqlens_q=meta.query_start_loc, seqused_k=meta.seq_lens,
        max_seqlen_q=meta.max_query_len, max_seqlen_k=meta.max_seq_len, page_table=meta.block_tables,
        softmax_scale=scale, causal=True, window_size=(window - 1, 0) if window > 0 else (None, None),
        learnable_sink=sinks,
    )
    return result

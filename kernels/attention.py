"""paged_attention entry point: the batch's path (prefill, decode, or sinks/window), the
libraries to try on it (the engine's `attention` argument, else the GPU's measured table in
kernels/configs/attention.json), the first of them able to serve the batch, and our Triton
kernels for everything else: decode-only batches take the split-K kernel, any other mix the
varlen one. A library that raises is switched off with one warning and the batch goes on down
the line (attention_libs), so an optional library never fails a request."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from . import attention_libs
from .attention_decode import decode_attention
from .attention_prefill import prefill_attention
from .cudnn_sdpa import cudnn_can_serve, cudnn_paged_attention
from .fa4 import fa4_can_serve, fa4_paged_attention
from .flash import flash_can_serve, flash_paged_attention
from .flashinfer import flashinfer_can_serve, flashinfer_paged_attention

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata

# name -> (can it serve this batch, run it); each run has paged_attention's arguments plus `out`
LIBRARIES: dict[str, tuple[Callable[..., bool], Callable[..., torch.Tensor]]] = {
    "flashinfer": (flashinfer_can_serve, flashinfer_paged_attention),
    "fa4": (fa4_can_serve, fa4_paged_attention),
    "cudnn": (cudnn_can_serve, cudnn_paged_attention),
    "flash_attn": (flash_can_serve, flash_paged_attention),
}


def attention_path(meta: AttentionMetadata, sinks: torch.Tensor | None, window: int) -> str:
    """Which of laminar.ops.attention_choice.ATTENTION_PATHS a batch takes."""
    if sinks is not None or window > 0:
        return "sinks"
    return "decode" if meta.max_query_len == 1 else "prefill"


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    sinks: torch.Tensor | None = None, window: int = 0, chosen: dict[str, str] | None = None,
    excluded: frozenset[str] = frozenset(),
) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its paged context (keys already stored).

    `window` > 0 keeps keys with position > query position - window; `sinks` (fp32
    [num_q_heads]) adds one logit per head to the softmax denominator only. Both as in
    laminar.ops.torch_ops.paged_attention; window is a per-layer constant, so no host sync.
    `chosen` names a library per path (laminar.ops.attention_choice.parse_attention; paths not
    named follow the GPU's table); `excluded` libraries never serve (the engine's switches).
    """
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if q.shape[0] == 0 or meta.num_seqs == 0 or meta.max_query_len == 0:
        return out
    path = attention_path(meta, sinks, window)
    for name in attention_libs.order(q.device, path, chosen or {}, excluded):
        can_serve, run = LIBRARIES[name]
        if not can_serve(q, k_cache, meta, sinks, window):
            continue
        try:
            return run(q, k_cache, v_cache, meta, scale, out, sinks, window)
        except Exception as exc:  # a compile or shape failure of an optional library: ours serve instead
            attention_libs.fail(name, exc)
    if meta.max_query_len == 1:
        return decode_attention(q, k_cache, v_cache, meta, scale, out, sinks, window)
    return prefill_attention(q, k_cache, v_cache, meta, scale, out, sinks, window)

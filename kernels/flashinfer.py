"""FlashInfer's paged prefill attention, used instead of our varlen kernel where it is installed.

Measured side by side on an H200 (perf/results/kernels-NVIDIA_H200-flashinfer.md): its Hopper
(FA3) paged prefill kernel runs 1.19-1.46x faster than our Triton one on 4k-16k prompts and
mixed batches, while its decode kernels are level with ours. So it serves the prompt rows of
batches run eagerly (plain steps and the attention of mixed CUDA graphs); the decode rows that
lead such a batch, decode-only batches and anything being captured stay on our kernels (its
plan() runs on the host). No attention sinks here (GPT-OSS stays on ours). Our per-layer K and V
caches [blocks, page, Hk, D] are its "NHD" paged layout given as a (k, v) pair: no copy, only our
block tables as its page lists. Its kernels JIT-compile with the machine's nvcc on first use
(cached under ~/.cache/flashinfer; build.sh installs its prebuilt cubins where they exist for
the installed version), which the engine's start-up profile triggers.
The engine's flashinfer argument (LAMINAR_FLASHINFER=0) turns it off.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from .attention_decode import decode_attention
from .attention_libs import imported

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata

WORKSPACE_BYTES = 128 << 20  # FlashInfer's recommended float workspace (split-KV partial results)
HEAD_DIMS = (64, 128, 256)  # the head sizes its Hopper and FA2 prefill templates are built for


def page_lists(query_start: np.ndarray, seq_lens: np.ndarray, tables: np.ndarray,
               page: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Our host-side layout in FlashInfer's CSR terms: query prefix sums, page prefix sums,
    the pages each sequence uses (in order), and the tokens held by each last page."""
    pages = (seq_lens + page - 1) // page
    indptr = np.zeros(len(seq_lens) + 1, dtype=np.int32)
    np.cumsum(pages, out=indptr[1:])
    used = np.arange(tables.shape[1])[None, :] < pages[:, None]
    return (query_start.astype(np.int32), indptr, tables[used].astype(np.int32),
            (seq_lens - (pages - 1) * page).astype(np.int32))


@dataclass
class _Plan:
    """The wrapper of one device and what it was last planned for: the metadata (held weakly, so
    a new batch that reuses a freed one's id is never mistaken for it), and the leading decode
    sequences split off to our decode kernel with their own metadata."""

    wrapper: object
    meta: weakref.ref | None = None
    key: tuple = ()
    decodes: int = 0
    decode_meta: AttentionMetadata | None = None


_plans: dict[torch.device, _Plan] = {}


def flashinfer_can_serve(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata,
                         sinks: torch.Tensor | None, window: int) -> bool:
    return (
        sinks is None
        and meta.max_query_len > 1
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] in HEAD_DIMS
        and not torch.cuda.is_current_stream_capturing()
        and imported("flashinfer") is not None
    )


def flashinfer_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor, sinks: torch.Tensor | None = None, window: int = 0,
) -> torch.Tensor:
    """Causal attention as our kernels compute it: FlashInfer aligns the causal mask bottom-right
    (each sequence's queries at the end of its context, as ours), and its window_left counts the
    keys before the query's own, so our window W is W - 1. The decode rows that lead every batch
    (meta.num_decodes of them) go to our decode kernel: FlashInfer's Hopper prefill kernel gives each sequence a whole query
    tile, 6.5x our decode kernel's time for 64 decodes at 2k context (same H200 run)."""
    plan = _planned(q, k_cache, meta, scale, window)
    n = plan.decodes
    if n:
        decode_attention(q[:n], k_cache, v_cache, plan.decode_meta, scale, out[:n], window=window)
    plan.wrapper.run(q[n:], (k_cache, v_cache), out=out[n:])
    return out


def _planned(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata, scale: float, window: int) -> _Plan:
    """The device's wrapper planned for this batch: planned once per metadata (every layer of a
    stretch shares it), again only when the batch, window or shape changes."""
    plan = _plans.get(q.device)
    if plan is None:
        workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
        plan = _plans[q.device] = _Plan(imported("flashinfer").BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD"))
    _, page, hk, d = k_cache.shape
    key = (window, scale, q.shape[1], hk, d, page, q.dtype, k_cache.dtype)
    if plan.meta is not None and plan.meta() is meta and plan.key == key:
        return plan
    query_start, seq_lens, tables = meta.host if meta.host is not None else (
        meta.query_start_loc.cpu().numpy(), meta.seq_lens.cpu().numpy(), meta.block_tables.cpu().numpy())
    n = meta.num_decodes
    qo_indptr, kv_indptr, indices, last = (torch.from_numpy(a) for a in page_lists(
        query_start[n:] - query_start[n], seq_lens[n:], tables[n:], page))
    plan.wrapper.plan(qo_indptr, kv_indptr, indices, last, q.shape[1], hk, d, page, causal=True, sm_scale=scale,
                      window_left=window - 1 if window > 0 else -1, q_data_type=q.dtype, kv_data_type=k_cache.dtype)
    plan.decode_meta = replace(
        meta, query_start_loc=meta.query_start_loc[: n + 1], seq_lens=meta.seq_lens[:n], block_tables=meta.block_tables[:n],
        slot_mapping=meta.slot_mapping[:n], max_query_len=1, max_seq_len=int(seq_lens[:n].max()), host=None) if n else None
    plan.meta, plan.key, plan.decodes = weakref.ref(meta), key, n
    return plan


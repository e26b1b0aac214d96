"""FlashInfer's paged attention over our KV cache, as a peer column in the kernel benchmark.

Our cache is FlashInfer's "NHD" paged layout given as a (k, v) pair, so no copy is needed: our
block tables become its page lists as in the engine's path (laminar_kernels.flashinfer).
Variants: its decode kernel on CUDA cores and on tensor cores, and its prefill kernel with the
FA2 template and with the Hopper FA3 one. Each JIT-compiles on first use with the machine's
nvcc (FLASHINFER_WORKSPACE_BASE picks the cache).
plan() reads the page lists on the host, so it runs once per batch, outside the timing.
"""
from __future__ import annotations

from typing import Callable

import torch

from laminar_kernels.attention_libs import imported
from laminar_kernels.flashinfer import page_lists

WORKSPACE_BYTES = 256 << 20
DECODE_VARIANTS = {"decode": False, "decode-tc": True}
PREFILL_VARIANTS = ("fa2", "fa3")


def variants(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start_loc: torch.Tensor,
             seq_lens: torch.Tensor, block_tables: torch.Tensor, scale: float, causal: bool
             ) -> dict[str, Callable[[], torch.Tensor]]:
    """Planned FlashInfer calls for one batch, by variant name; decode variants only when every
    sequence has one query. A variant that fails to build or plan is reported and left out."""
    flashinfer = imported("flashinfer")
    if flashinfer is None:
        return {}
    _, page, hk, d = k_cache.shape
    hq = q.shape[1]
    qo_indptr, indptr, indices, last = (torch.from_numpy(a).to(q.device) for a in page_lists(
        query_start_loc.cpu().numpy(), seq_lens.cpu().numpy(), block_tables.cpu().numpy(), page))
    one_query = bool((qo_indptr[1:] - qo_indptr[:-1] == 1).all())
    out: dict[str, Callable[[], torch.Tensor]] = {}
    plans: dict[str, tuple[Callable[[], object], object]] = {}
    if one_query:
        for name, tensor_cores in DECODE_VARIANTS.items():
            ws = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
            w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=tensor_cores)
            plans[name] = (lambda w=w: w.plan(indptr, indices, last, hq, hk, d, page, sm_scale=scale,
                                              q_data_type=q.dtype, kv_data_type=k_cache.dtype), w)
    for backend in PREFILL_VARIANTS:
        ws = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend=backend)
        plans[f"prefill-{backend}"] = (lambda w=w: w.plan(qo_indptr, indptr, indices, last, hq, hk, d, page,
                                                          causal=causal, sm_scale=scale, q_data_type=q.dtype,
                                                          kv_data_type=k_cache.dtype), w)
    for name, (plan, w) in plans.items():
        try:
            plan()
            w.run(q, (k_cache, v_cache))
            torch.cuda.synchronize()
        except Exception as exc:  # a JIT or planning failure is a finding, not a crash
            print(f"flashinfer {name} failed: {repr(exc)[:300]}", flush=True)
            continue
        out[name] = lambda w=w: w.run(q, (k_cache, v_cache))
    return out

"""Router softmax + top-k (+ renormalisation, + marking the picked experts) in one kernel: one row of
logits per program."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import next_pow2


@triton.jit
def _route_topk_kernel(
    logits_ptr, w_ptr, ids_ptr, hits_ptr, n_experts, stride_t,
    TOP_K: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr, RENORM: tl.constexpr, HITS: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_E)
    x = tl.load(logits_ptr + tok * stride_t + offs, mask=offs < n_experts, other=-float("inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, axis=0))
    p = p / tl.sum(p, axis=0)
    kk = tl.arange(0, BLOCK_K)
    top_w = tl.zeros([BLOCK_K], dtype=tl.float32)
    top_i = tl.zeros([BLOCK_K], dtype=tl.int64)
    work = tl.where(offs < n_experts, p, -1.0)
    # k rounds of argmax: k is small (<= 8 or so), so this beats a sort; ties go to the lowest id like torch.
    for j in tl.static_range(TOP_K):
        best = tl.max(work, axis=0)
        idx = tl.min(tl.where(work == best, offs, BLOCK_E), axis=0)
        top_w = tl.where(kk == j, best, top_w)
        top_i = tl.where(kk == j, idx.to(tl.int64), top_i)
        work = tl.where(offs == idx, -2.0, work)
    if RENORM:
        top_w = top_w / tl.sum(top_w, axis=0)
    tl.store(w_ptr + tok * TOP_K + kk, top_w, mask=kk < TOP_K)
    tl.store(ids_ptr + tok * TOP_K + kk, top_i, mask=kk < TOP_K)
    if HITS:  # programs race to write the same True: any order is right
        tl.store(hits_ptr + top_i, tl.full([BLOCK_K], 1, tl.uint8), mask=kk < TOP_K)


def route_topk(
    router_logits: torch.Tensor, top_k: int, renormalize: bool, hits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax router: returns (weights [T, k] fp32, expert ids [T, k] int64), highest first; sets
    hits[id] (bool [E], where given) for every picked expert."""
    assert hits is None or (hits.dtype == torch.bool and hits.is_contiguous())
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    n_tok, n_experts = logits.shape
    weights = torch.empty((n_tok, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((n_tok, top_k), dtype=torch.int64, device=logits.device)
    if n_tok:
        _route_topk_kernel[(n_tok,)](
            logits, weights, ids, ids if hits is None else hits.view(torch.uint8), n_experts, logits.stride(0),
            TOP_K=top_k, BLOCK_K=next_pow2(top_k), BLOCK_E=next_pow2(n_experts), RENORM=renormalize,
            HITS=hits is not None,
        )
    return weights, ids

"""Sorts (token, slot) pairs by expert and pads each expert's run to the GEMM's BLOCK_M.

Three launches, none of which syncs with the host: per-chunk expert histograms (parallel),
a single-program prefix pass that also maps every M-block to its expert and marks each
expert's padding rows, and a parallel scatter. The GEMM grid is sized from a host-side upper
bound and stops at the device-side padded total, so routing never forces a device->host copy;
nothing reads past the total, so nothing fills it (a decode step runs this per MoE layer, and
a fill is one more launch each).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import jit_sized, next_pow2


@jit_sized("n_valid")
def _count_kernel(ids_ptr, counts_ptr, n_valid, n_experts, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    ids = tl.load(ids_ptr + offs, mask=offs < n_valid, other=-1).to(tl.int32)
    experts = tl.arange(0, BLOCK_E)
    onehot = (ids[:, None] == experts[None, :]).to(tl.int32)
    tl.store(counts_ptr + c * BLOCK_E + experts, tl.sum(onehot, axis=0))


@jit_sized("n_chunks", "n_blocks", "n_valid")
def _prefix_kernel(
    counts_ptr, offsets_ptr, expert_ids_ptr, total_ptr, sorted_ptr, n_chunks, n_blocks, n_valid,
    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, ROWS: tl.constexpr,
):
    experts = tl.arange(0, BLOCK_E)
    totals = tl.zeros([BLOCK_E], dtype=tl.int32)
    for c0 in range(0, n_chunks, ROWS):
        r = c0 + tl.arange(0, ROWS)
        counts = tl.load(counts_ptr + r[:, None] * BLOCK_E + experts[None, :], mask=r[:, None] < n_chunks, other=0)
        totals += tl.sum(counts, axis=0)
    padded = (totals + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    running = ends - padded
    tl.store(total_ptr, tl.sum(padded, axis=0))
    # Each expert's padding rows (after its own tokens, up to its padded end) hold the pad value.
    pad = (ends - padded + totals)[:, None] + tl.arange(0, BLOCK_M)[None, :]
    tl.store(sorted_ptr + pad, n_valid, mask=pad < ends[:, None])
    # Each chunk's first slot per expert: expert start + counts of earlier chunks.
    for c0 in range(0, n_chunks, ROWS):
        r = c0 + tl.arange(0, ROWS)
        m = r[:, None] < n_chunks
        cnt = tl.load(counts_ptr + r[:, None] * BLOCK_E + experts[None, :], mask=m, other=0)
        incl = tl.cumsum(cnt, axis=0)
        tl.store(offsets_ptr + r[:, None] * BLOCK_E + experts[None, :], running[None, :] + incl - cnt, mask=m)
        running += tl.sum(cnt, axis=0)
    # Block b starts at row b*BLOCK_M; its expert is the number of expert runs that end at or before it.
    for b0 in range(0, n_blocks, ROWS):
        b = b0 + tl.arange(0, ROWS)
        e = tl.sum((ends[None, :] <= (b * BLOCK_M)[:, None]).to(tl.int32), axis=1)
        tl.store(expert_ids_ptr + b, e, mask=b < n_blocks)


@jit_sized("n_valid")
def _scatter_kernel(ids_ptr, offsets_ptr, sorted_ptr, n_valid, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    c = tl.program_id(0)
    offs = c * CHUNK + tl.arange(0, CHUNK)
    valid = offs < n_valid
    ids = tl.load(ids_ptr + offs, mask=valid, other=-1).to(tl.int32)
    experts = tl.arange(0, BLOCK_E)
    onehot = (ids[:, None] == experts[None, :]).to(tl.int32)
    rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1
    base = tl.load(offsets_ptr + c * BLOCK_E + experts)
    pos = tl.sum(onehot * base[None, :], axis=1) + rank
    tl.store(sorted_ptr + pos, offs, mask=valid & (ids >= 0))


def max_padded_rows(n_valid: int, n_experts: int, block_m: int) -> int:
    """Upper bound on padded rows: at most min(M, E) experts are non-empty, each padded by < BLOCK_M."""
    return n_valid + min(n_valid, n_experts) * (block_m - 1)


def moe_align(
    topk_ids: torch.Tensor, n_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (sorted flat slot ids, expert id per M-block, padded total [1]): each expert's run of
    slot ids is padded to a multiple of block_m with M = topk_ids.numel(); entries from the total on
    are unset (max_padded_rows of them are allocated)."""
    flat = topk_ids.reshape(-1)
    n_valid = flat.numel()
    dev = flat.device
    max_rows = max_padded_rows(n_valid, n_experts, block_m)
    n_blocks = triton.cdiv(max_rows, block_m)
    block_e = next_pow2(n_experts)
    chunk = max(16, min(256, 8192 // block_e, next_pow2(n_valid)))
    n_chunks = triton.cdiv(n_valid, chunk)
    sorted_ids = torch.empty((max_rows,), dtype=torch.int32, device=dev)
    expert_ids = torch.empty((n_blocks,), dtype=torch.int32, device=dev)
    total = torch.empty((1,), dtype=torch.int32, device=dev)
    counts = torch.empty((n_chunks, block_e), dtype=torch.int32, device=dev)
    offsets = torch.empty_like(counts)
    _count_kernel[(n_chunks,)](flat, counts, n_valid, n_experts, CHUNK=chunk, BLOCK_E=block_e)
    _prefix_kernel[(1,)](
        counts, offsets, expert_ids, total, sorted_ids, n_chunks, n_blocks, n_valid,
        BLOCK_M=block_m, BLOCK_E=block_e, ROWS=max(1, min(64, 8192 // block_e)), num_warps=8,
    )
    _scatter_kernel[(n_chunks,)](flat, offsets, sorted_ids, n_valid, CHUNK=chunk, BLOCK_E=block_e)
    return sorted_ids, expert_ids, total

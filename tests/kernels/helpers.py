"""Shared builders and error metrics for the kernel tests."""
from __future__ import annotations

import torch

from laminar.ops.metadata import AttentionMetadata

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter rounds fp32->bf16 by truncation, so bf16 gets a little more slack there.
TOL = {torch.bfloat16: 1.6e-2 if DEVICE == "cpu" else 1e-2, torch.float32: 1e-4}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere (an unwritten poisoned element) gives inf."""
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64).all():
        return float("inf")
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = rel_err(out, ref)
    assert err <= TOL[dtype] * scale, f"relative error {err:.3e} > {TOL[dtype] * scale:.1e}"


def randn(*shape: int, dtype: torch.dtype, scale: float = 1.0, gen: torch.Generator | None = None) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(device=DEVICE, dtype=dtype)


def paged_batch(
    seqs: list[tuple[int, int]], n_q_heads: int, n_kv_heads: int, head_dim: int, page: int,
    dtype: torch.dtype, spare_blocks: int = 3, gen: torch.Generator | None = None,
):
    """Builds (q, k_cache, v_cache, meta) for (q_len, seq_len) sequences.

    Physical blocks are shuffled, block tables carry extra unused entries pointing at
    other sequences' or spare blocks, and every cache slot outside a context is NaN,
    so reading anything but a sequence's own first seq_len slots poisons the output.
    """
    n_used = [(s + page - 1) // page for _, s in seqs]
    total_blocks = sum(n_used) + spare_blocks
    perm = torch.randperm(total_blocks, generator=gen)
    max_blocks = max(n_used + [1]) + 2
    k_cache = torch.full((total_blocks, page, n_kv_heads, head_dim), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    tables = torch.randint(0, total_blocks, (len(seqs), max_blocks), generator=gen, dtype=torch.int32)
    used = 0
    for b, (_, seq_len) in enumerate(seqs):
        blocks = perm[used : used + n_used[b]]
        used += n_used[b]
        tables[b, : n_used[b]] = blocks.to(torch.int32)
        flat_k = k_cache[blocks].flatten(0, 1)
        flat_k[:seq_len] = torch.randn(seq_len, n_kv_heads, head_dim, generator=gen).to(dtype)
        flat_v = v_cache[blocks].flatten(0, 1)
        flat_v[:seq_len] = torch.randn(seq_len, n_kv_heads, head_dim, generator=gen).to(dtype)
        k_cache[blocks] = flat_k.view(-1, page, n_kv_heads, head_dim)
        v_cache[blocks] = flat_v.view(-1, page, n_kv_heads, head_dim)
    q_lens = torch.tensor([q for q, _ in seqs], dtype=torch.int32)
    qsl = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    qsl[1:] = torch.cumsum(q_lens, 0)
    slots = []
    for b, (q_len, seq_len) in enumerate(seqs):
        for pos in range(seq_len - q_len, seq_len):
            slots.append(int(tables[b, pos // page]) * page + pos % page)
    meta = AttentionMetadata(
        query_start_loc=qsl.to(DEVICE), seq_lens=torch.tensor([s for _, s in seqs], dtype=torch.int32).to(DEVICE),
        block_tables=tables.to(DEVICE), slot_mapping=torch.tensor(slots, dtype=torch.int64).to(DEVICE),
        max_query_len=int(q_lens.max()) if seqs else 0, max_seq_len=max((s for _, s in seqs), default=0),
        num_decodes=next((i for i, (q_len, _) in enumerate(seqs) if q_len != 1), len(seqs)),  # decodes lead, as in a step
    )
    q = randn(int(qsl[-1]), n_q_heads, head_dim, dtype=dtype, gen=gen)
    return q, k_cache.to(DEVICE), v_cache.to(DEVICE), meta

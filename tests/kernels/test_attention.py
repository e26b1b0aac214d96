"""Paged attention (decode split-K and varlen prefill) vs the torch reference."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close, paged_batch

import laminar_kernels as K
from laminar.ops import torch_ops as R
from laminar_kernels.attention_decode import decode_attention

ON_GPU = DEVICE == "cuda"
DTYPES = [torch.bfloat16, torch.float32]
# Each case: ((q_len, seq_len) per sequence, Hq, Hk, D, page).
CASES = {
    "decode": ([(1, 1), (1, 17), (1, 40), (1, 100)], 4, 2, 32, 16),
    "decode_zero_len_query": ([(1, 9), (0, 30), (1, 16)], 4, 1, 64, 8),
    "prefill_fresh": ([(5, 5), (19, 19)], 4, 2, 32, 16),
    "prefill_cached_prefix_mixed": ([(5, 5), (20, 37), (0, 10), (1, 33), (33, 50)], 4, 2, 64, 16),
    "head_dim_48_mha": ([(3, 20), (1, 7)], 2, 2, 48, 8),
}
if ON_GPU:
    CASES |= {
        "gpu_decode_b64_4k": ([(1, 4096 - 7 * i) for i in range(64)], 32, 4, 128, 16),
        "gpu_decode_long": ([(1, 16384), (1, 1000), (1, 3)], 32, 4, 128, 16),
        "gpu_prefill_8192": ([(8192, 8192)], 32, 4, 128, 16),
        "gpu_mixed_chunks": ([(1, 3000), (512, 2100), (1, 1), (0, 70), (300, 300), (1, 4097)], 32, 4, 128, 16),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_paged_attention(case: str, dtype: torch.dtype) -> None:
    seqs, hq, hk, d, page = CASES[case]
    if ON_GPU and dtype == torch.float32 and case == "gpu_prefill_8192":
        pytest.skip("fp32 at 8192 tokens only repeats the bf16 check")
    q, k_cache, v_cache, meta = paged_batch(seqs, hq, hk, d, page, dtype)
    scale = d**-0.5
    out = K.paged_attention(q, k_cache, v_cache, meta, scale)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, scale)
    rows = torch.cat([torch.arange(int(a), int(b)) for a, b in zip(meta.query_start_loc[:-1], meta.query_start_loc[1:])])
    assert rows.numel() == q.shape[0]
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("n_splits", [3, 7])
def test_decode_split_reduce(n_splits: int) -> None:
    """Forced splits, more than some contexts have tiles: empty splits must drop out of the merge."""
    q, k_cache, v_cache, meta = paged_batch([(1, 70), (1, 5), (1, 33)], 8, 2, 32, 16, torch.bfloat16)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k_cache, v_cache, meta, 0.2, out, n_splits=n_splits, block_n=16)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 0.2)
    assert_close(out, ref, torch.bfloat16)


def test_store_then_attend() -> None:
    """The engine's order: store the new keys, then attend over prefix + new tokens."""
    q, k_cache, v_cache, meta = paged_batch([(6, 22), (1, 9)], 4, 2, 32, 8, torch.bfloat16)
    k_new = torch.randn(q.shape[0], 2, 32, device=DEVICE).to(torch.bfloat16)
    v_new = torch.randn_like(k_new)
    K.store_kv(k_new, v_new, k_cache, v_cache, meta.slot_mapping)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 0.3)
    assert_close(K.paged_attention(q, k_cache, v_cache, meta, 0.3), ref, torch.bfloat16)

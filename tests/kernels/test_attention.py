"""Paged attention (decode split-K and varlen prefill) vs the torch reference, with and without
GPT-OSS's sliding window and attention sinks."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, assert_close, paged_batch, randn

import laminar_kernels as K
from laminar.ops import torch_ops as R
from laminar_kernels.attention_decode import decode_attention
from laminar_kernels.attention_prefill import prefill_attention

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
    decode_attention(q, k_cache, v_cache, meta, 0.2, out, n_splits=n_splits, config=(16, 4, 1))
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


# Each case: ((q_len, seq_len) per sequence, Hq, Hk, D, page, window); windows shorter than most contexts.
WINDOW_CASES = {
    "decode": ([(1, 1), (1, 17), (1, 40), (1, 100)], 4, 2, 32, 16, 24),
    "mixed": ([(5, 5), (20, 37), (0, 10), (1, 33), (40, 150)], 4, 2, 64, 16, 64),
    "mixed_window_under_a_page": ([(6, 22), (1, 9), (30, 30)], 8, 2, 32, 8, 7),
    "window_of_one": ([(9, 20), (1, 12)], 4, 4, 32, 8, 1),
}
if ON_GPU:
    WINDOW_CASES |= {
        "gpu_decode_b64_4k": ([(1, 4096 - 7 * i) for i in range(64)], 64, 8, 64, 16, 128),
        "gpu_prefill_4096": ([(4096, 4096)], 64, 8, 64, 16, 128),
        "gpu_mixed_chunks": ([(1, 3000), (512, 2100), (1, 1), (0, 70), (300, 300), (1, 4097)], 64, 8, 64, 16, 128),
    }


def poison_below_window(k_cache: torch.Tensor, v_cache: torch.Tensor, meta, window: int) -> None:
    """NaN in every slot older than the window of a sequence's first new query: no query may read it.

    Call it after computing the reference, which reads whole contexts."""
    page = k_cache.shape[1]
    starts, lens = meta.query_start_loc.tolist(), meta.seq_lens.tolist()
    for b, seq_len in enumerate(lens):
        for pos in range(max(seq_len - (starts[b + 1] - starts[b]) - window + 1, 0)):
            blk = int(meta.block_tables[b, pos // page])
            k_cache[blk, pos % page] = float("nan")
            v_cache[blk, pos % page] = float("nan")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("windowed, with_sinks", [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("case", list(WINDOW_CASES))
def test_window_and_sinks(case: str, windowed: bool, with_sinks: bool, dtype: torch.dtype) -> None:
    seqs, hq, hk, d, page, window = WINDOW_CASES[case]
    if ON_GPU and dtype == torch.float32 and case.startswith("gpu_prefill"):
        pytest.skip("fp32 at 4096 tokens only repeats the bf16 check")
    window = window if windowed else 0
    q, k_cache, v_cache, meta = paged_batch(seqs, hq, hk, d, page, dtype)
    sinks = randn(hq, dtype=torch.float32, scale=2.0) + 1.0 if with_sinks else None
    scale = d**-0.5
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, scale, sinks=sinks, window=window)
    if windowed:
        poison_below_window(k_cache, v_cache, meta, window)
    out = K.paged_attention(q, k_cache, v_cache, meta, scale, sinks=sinks, window=window)
    assert_close(out, ref, dtype)


def test_sinks_take_softmax_mass() -> None:
    """A sink far above every logit leaves (almost) nothing to the keys; a sink far below changes nothing."""
    q, k_cache, v_cache, meta = paged_batch([(3, 20), (1, 9)], 4, 2, 32, 8, torch.float32)
    plain = K.paged_attention(q, k_cache, v_cache, meta, 0.2)
    low = torch.full((4,), -1e4, dtype=torch.float32, device=DEVICE)
    assert_close(K.paged_attention(q, k_cache, v_cache, meta, 0.2, sinks=low), plain, torch.float32)
    high = K.paged_attention(q, k_cache, v_cache, meta, 0.2, sinks=low.neg() / 100)
    assert high.abs().max().item() < 1e-6


@pytest.mark.parametrize("n_splits", [1, 3, 5])
def test_decode_splits_with_window_and_sinks(n_splits: int) -> None:
    """Splits share only the window's keys; the sink joins once, in the merge, whatever the split count."""
    q, k_cache, v_cache, meta = paged_batch([(1, 70), (1, 5), (1, 33)], 8, 2, 32, 16, torch.float32)
    sinks = randn(8, dtype=torch.float32)
    ref = R.paged_attention(q, k_cache, v_cache, meta, 0.2, sinks=sinks, window=20)
    poison_below_window(k_cache, v_cache, meta, 20)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, k_cache, v_cache, meta, 0.2, out, sinks=sinks, window=20, n_splits=n_splits, config=(16, 4, 1))
    assert_close(out, ref, torch.float32)


def test_prefill_kernel_serves_decodes_with_window() -> None:
    """A decode-only batch through the varlen kernel (it serves decodes mixed into prefill steps)."""
    q, k_cache, v_cache, meta = paged_batch([(1, 70), (1, 5), (1, 33)], 8, 2, 32, 16, torch.bfloat16)
    sinks = randn(8, dtype=torch.float32)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 0.2, sinks=sinks, window=20)
    poison_below_window(k_cache, v_cache, meta, 20)
    out = prefill_attention(q, k_cache, v_cache, meta, 0.2, torch.empty_like(q), sinks=sinks, window=20)
    assert_close(out, ref, torch.bfloat16)

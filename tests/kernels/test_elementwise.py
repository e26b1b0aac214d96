"""rms_norm, add_rms_norm, rope, silu_and_mul, store_kv, route_topk vs the torch reference."""
from __future__ import annotations

import pytest
import torch
from helpers import DEVICE, TOL, assert_close, randn

import laminar_kernels as K
from laminar.ops import torch_ops as R

ON_GPU = DEVICE == "cuda"
DTYPES = [torch.bfloat16, torch.float32]
# (tokens, hidden): one token, ragged, and on GPU a real prefill.
NORM_SHAPES = [(1, 64), (13, 96)] + ([(8192, 2048), (77, 2048)] if ON_GPU else [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x, w = randn(*shape, dtype=dtype), randn(shape[1], dtype=dtype)
    assert_close(K.rms_norm(x, w, 1e-6), R.rms_norm(x.float(), w.float(), 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_per_head(dtype: torch.dtype) -> None:
    """Qwen3's q/k norm: [T, heads, D] normalised over D."""
    x, w = randn(5, 6, 32, dtype=dtype), randn(32, dtype=dtype)
    assert_close(K.rms_norm(x, w, 1e-6), R.rms_norm(x.float(), w.float(), 1e-6), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_add_rms_norm(shape: tuple[int, int], dtype: torch.dtype) -> None:
    x, r, w = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype), randn(shape[1], dtype=dtype)
    out, summed = K.add_rms_norm(x, r, w, 1e-6)
    ref_out, ref_sum = R.add_rms_norm(x, r, w, 1e-6)
    assert_close(summed, ref_sum, dtype)
    assert_close(out, ref_out, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_tok,hq,hk,d", [(1, 4, 2, 32), (9, 6, 2, 64)] + ([(8192, 32, 4, 128)] if ON_GPU else []))
def test_rope(n_tok: int, hq: int, hk: int, d: int, dtype: torch.dtype) -> None:
    """q and k come as strided slices of one fused qkv projection, like the model's."""
    qkv = randn(n_tok, (hq + 2 * hk) * d, dtype=dtype)
    q = qkv[:, : hq * d].view(n_tok, hq, d)
    k = qkv[:, hq * d : (hq + hk) * d].view(n_tok, hk, d)
    pos = torch.randint(0, 4096, (n_tok,), device=DEVICE)
    cos_sin = randn(4096, d, dtype=torch.float32)
    out_q, out_k = K.rope(q, k, pos, cos_sin)
    ref_q, ref_k = R.rope(q.float(), k.float(), pos, cos_sin)
    assert_close(out_q, ref_q, dtype)
    assert_close(out_k, ref_k, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2, 48), (7, 3, 64)] + ([(8192, 1, 1536)] if ON_GPU else []))
def test_silu_and_mul(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = randn(*shape, dtype=dtype)
    assert_close(K.silu_and_mul(x), R.silu_and_mul(x.float()), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_tok,page,hk,d", [(1, 16, 2, 32), (21, 8, 2, 64)] + ([(8192, 16, 4, 128)] if ON_GPU else []))
def test_store_kv(n_tok: int, page: int, hk: int, d: int, dtype: torch.dtype) -> None:
    n_blocks = (n_tok + page - 1) // page + 4
    slots = torch.randperm(n_blocks * page, device=DEVICE)[:n_tok]
    kv = randn(n_tok, 2 * hk * d + 8, dtype=dtype)  # strided token views, like slices of a fused qkv
    k, v = kv[:, : hk * d].view(n_tok, hk, d), kv[:, hk * d : 2 * hk * d].view(n_tok, hk, d)
    caches = [torch.full((n_blocks, page, hk, d), float("nan"), dtype=dtype, device=DEVICE) for _ in range(4)]
    K.store_kv(k, v, caches[0], caches[1], slots)
    R.store_kv(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0].nan_to_num(7.0), caches[2].nan_to_num(7.0))
    assert torch.equal(caches[1].nan_to_num(7.0), caches[3].nan_to_num(7.0))


ROUTE_SHAPES = [(1, 8, 2), (17, 20, 4), (5, 128, 8)] + ([(8192, 128, 8), (333, 32, 4)] if ON_GPU else [])


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("n_tok,n_experts,top_k", ROUTE_SHAPES)
def test_route_topk(n_tok: int, n_experts: int, top_k: int, renormalize: bool) -> None:
    logits = randn(n_tok, n_experts, dtype=torch.float32, scale=2.0)
    hits, ref_hits = (torch.zeros(n_experts, dtype=torch.bool, device=DEVICE) for _ in range(2))
    hits[0] = ref_hits[0] = True  # marks from earlier calls stay
    w, ids = K.route_topk(logits, top_k, renormalize, hits)
    ref_w, ref_ids = R.route_topk(logits, top_k, renormalize, ref_hits)
    assert ids.dtype == torch.int64 and w.dtype == torch.float32
    assert torch.equal(ids, ref_ids) and torch.equal(hits, ref_hits)
    assert_close(w, ref_w, torch.float32)


def test_route_topk_bf16_logits() -> None:
    """bf16 logits tie often; then any of the tied experts is right, so check the chosen probabilities."""
    logits = randn(33, 64, dtype=torch.bfloat16, scale=2.0)
    w, ids = K.route_topk(logits, 8, True)
    ref_w, _ = R.route_topk(logits, 8, True)
    probs = torch.softmax(logits.float(), -1)
    assert_close(probs.gather(1, ids), R.route_topk(logits, 8, False)[0], torch.float32)
    assert_close(w, ref_w, torch.float32, scale=TOL[torch.bfloat16] / TOL[torch.float32] / 10)


# (tokens, q heads, kv heads, head dim, page): Qwen3-30B-A3B's 32/4 x 128 and GPT-OSS-20B's 64/8 x 64
# (one rank each), small ones, and on GPU a real prefill.
ROPE_KV_SHAPES = [(1, 4, 2, 32, 16), (9, 32, 4, 128, 16), (5, 64, 8, 64, 8)] + (
    [(8192, 32, 4, 128, 16), (77, 64, 8, 64, 16)] if ON_GPU else [])


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_tok,hq,hk,d,page", ROPE_KV_SHAPES)
def test_rope_store_kv(n_tok: int, hq: int, hk: int, d: int, page: int, dtype: torch.dtype, norm: bool) -> None:
    """The fused qk-norm + rope + KV store against the reference's steps: q, k, v as strided slices of one
    fused qkv; the last token is padding (slot -1) and must leave the cache alone."""
    qkv = randn(n_tok, (hq + 2 * hk) * d, dtype=dtype)
    q, k, v = (part.view(n_tok, -1, d) for part in qkv.split((hq * d, hk * d, hk * d), dim=-1))
    pos = torch.randint(0, 4096, (n_tok,), device=DEVICE)
    cos_sin = randn(4096, d, dtype=torch.float32)
    q_norm, k_norm = (randn(d, dtype=dtype), randn(d, dtype=dtype)) if norm else (None, None)
    n_blocks = (n_tok + page - 1) // page + 4
    slots = torch.randperm(n_blocks * page, device=DEVICE)[: n_tok + 1]
    ref_slots, spare = slots[:n_tok].clone(), slots[n_tok]
    slots = slots[:n_tok].clone()
    if n_tok > 1:
        slots[-1], ref_slots[-1] = -1, spare  # the reference writes the padding token to a spare slot, cleared below
    caches = [torch.full((n_blocks, page, hk, d), float("nan"), dtype=dtype, device=DEVICE) for _ in range(4)]
    out = K.rope_store_kv(q, k, v, pos, cos_sin, caches[0], caches[1], slots, q_norm, k_norm, 1e-6)
    ref = R.rope_store_kv(q, k, v, pos, cos_sin, caches[2], caches[3], ref_slots, q_norm, k_norm, 1e-6)
    assert_close(out, ref, dtype)
    for got, want in ((caches[0], caches[2]), (caches[1], caches[3])):
        want.flatten(0, 1)[spare] = float("nan")
        assert torch.equal(got.isnan(), want.isnan())
        assert_close(got.nan_to_num(0.0), want.nan_to_num(0.0), dtype)

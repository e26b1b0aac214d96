"""flash-attn selection and argument wiring; the real library where it is installed (not here)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, paged_batch

import laminar_kernels as K
import laminar_kernels.flash as flash
from laminar.ops import torch_ops as R

SEQS = [(5, 5), (20, 300), (1, 513), (40, 40)]  # fresh prompts, a cached prefix, a decode
FLASH = dict.fromkeys(("prefill", "decode", "sinks"), "flash_attn")  # attention="flash_attn"


def varlen_as_documented(q, k_cache, v_cache, cu_q, cu_k, max_q, max_k, softmax_scale, causal, window_size,
                         block_table):
    """flash_attn_varlen_func's documented semantics for a paged cache (bottom-right causal mask,
    window_size (left, right) keys either side of the query's aligned key, -1 unbounded, GQA by
    head groups), written independently of our reference to check our arguments."""
    assert causal and cu_q.dtype == cu_k.dtype == torch.int32 and block_table.dtype == torch.int32
    page, out = k_cache.shape[1], torch.empty_like(q)
    for b in range(block_table.shape[0]):
        qs, qe, n_k = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b + 1] - cu_k[b])
        assert qe - qs <= max_q and n_k <= max_k
        pages = block_table[b, : -(-n_k // page)].long()
        k = k_cache[pages].flatten(0, 1)[:n_k].float()
        v = v_cache[pages].flatten(0, 1)[:n_k].float()
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1).transpose(0, 1), v.repeat_interleave(groups, 1).transpose(0, 1)
        n_q = qe - qs
        k_pos = torch.arange(n_k, device=q.device)[None, :]
        q_pos = torch.arange(n_k - n_q, n_k, device=q.device)[:, None]
        mask = k_pos <= q_pos
        if window_size[0] >= 0:
            mask &= k_pos >= q_pos - window_size[0]
        o = F.scaled_dot_product_attention(q[qs:qe].float().transpose(0, 1), k, v, attn_mask=mask, scale=softmax_scale)
        out[qs:qe] = o.transpose(0, 1).to(q.dtype)
    return out


@pytest.mark.parametrize("window", [0, 1, 17])
def test_flash_wiring_matches_reference(monkeypatch, window):
    calls = []
    monkeypatch.setattr(flash, "varlen_func", lambda: lambda *a, **kw: calls.append(1) or varlen_as_documented(*a, **kw))
    q, k_cache, v_cache, meta = paged_batch(SEQS, 4, 2, 32, 256, torch.bfloat16)
    out = K.paged_attention(q, k_cache, v_cache, meta, 32**-0.5, window=window, chosen=FLASH)
    assert calls, "a bf16 batch over 256-token pages goes to flash-attn"
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 32**-0.5, window=window)
    assert_close(out, ref, torch.bfloat16)


def test_flash_is_skipped_with_sinks(monkeypatch):
    """flash-attn 2 has no attention sinks: our kernel serves those layers."""
    monkeypatch.setattr(flash, "varlen_func", lambda: lambda *a, **kw: pytest.fail("flash-attn was called"))
    q, k_cache, v_cache, meta = paged_batch([(3, 40), (1, 17)], 4, 2, 32, 256, torch.bfloat16)
    sinks = torch.zeros(4, dtype=torch.float32, device=DEVICE)
    out = K.paged_attention(q, k_cache, v_cache, meta, 32**-0.5, sinks=sinks, window=8, chosen=FLASH)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 32**-0.5, sinks=sinks, window=8)
    assert_close(out, ref, torch.bfloat16)


@pytest.mark.parametrize("page, dtype, on", [(16, torch.bfloat16, True), (256, torch.float32, True),
                                             (256, torch.bfloat16, False)])
def test_flash_is_skipped_where_it_cannot_serve(monkeypatch, page, dtype, on):
    monkeypatch.setattr(flash, "varlen_func", lambda: lambda *a, **kw: pytest.fail("flash-attn was called"))
    q, k_cache, v_cache, meta = paged_batch([(3, 40), (1, 17)], 4, 2, 32, page, dtype)
    K.paged_attention(q, k_cache, v_cache, meta, 32**-0.5, chosen=FLASH, excluded=frozenset(() if on else ("flash_attn",)))


@pytest.mark.skipif(DEVICE != "cuda" or flash.varlen_func() is None, reason="needs flash-attn and CUDA")
def test_real_flash_attn_matches_reference():
    q, k_cache, v_cache, meta = paged_batch(SEQS + [(1, 4096), (777, 1200)], 32, 4, 128, 256, torch.bfloat16)
    for window in (0, 128):
        out = K.paged_attention(q, k_cache, v_cache, meta, 128**-0.5, window=window, chosen=FLASH)
        ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 128**-0.5, window=window)
        assert_close(out, ref, torch.bfloat16)

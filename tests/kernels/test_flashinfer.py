"""FlashInfer wiring: page lists and planning on any machine (against FlashInfer's documented
semantics, written here independently of our reference); the real library where installed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, paged_batch

import laminar_kernels as K
import laminar_kernels.attention as attention
import laminar_kernels.attention_libs as libs
import laminar_kernels.flashinfer as fi
from laminar.ops import torch_ops as R

SEQS = [(5, 5), (20, 300), (1, 513), (40, 40)]  # fresh prompts, a cached prefix, a decode


def test_page_lists():
    query_start = np.array([0, 3, 4], dtype=np.int64)
    seq_lens = np.array([33, 16], dtype=np.int64)
    tables = np.array([[7, 2, 9, 5], [4, 8, 1, 1]], dtype=np.int32)
    qo, indptr, indices, last = fi.page_lists(query_start, seq_lens, tables, 16)
    assert qo.tolist() == [0, 3, 4] and qo.dtype == np.int32
    assert indptr.tolist() == [0, 3, 4]
    assert indices.tolist() == [7, 2, 9, 4]
    assert last.tolist() == [1, 16]


class DocumentedPrefill:
    """BatchPrefillWithPagedKVCacheWrapper as documented: CSR page lists, 'NHD' (k, v) caches, causal
    mask aligned bottom-right, window_left keys before the query's own (-1 unbounded), GQA by groups."""

    plans = 0

    def __init__(self, workspace: torch.Tensor, layout: str) -> None:
        assert layout == "NHD"

    def plan(self, qo_indptr, kv_indptr, indices, last, hq, hk, d, page, causal, sm_scale, window_left,
             q_data_type, kv_data_type):
        assert causal and all(t.dtype == torch.int32 and t.device.type == "cpu"
                              for t in (qo_indptr, kv_indptr, indices, last))
        DocumentedPrefill.plans += 1
        DocumentedPrefill.planned_seqs = len(last)
        self.args = (qo_indptr, kv_indptr, indices, last, hq, hk, d, page, sm_scale, window_left)

    def run(self, q, kv, out):
        qo_indptr, kv_indptr, indices, last, hq, hk, d, page, scale, window_left = self.args
        k_cache, v_cache = kv
        assert q.shape == out.shape and q.shape[0] == qo_indptr[-1] and q.shape[1:] == (hq, d)
        assert k_cache.shape[1:] == (page, hk, d)
        for b in range(len(last)):
            pages = indices[kv_indptr[b]:kv_indptr[b + 1]].long()
            n_k = (len(pages) - 1) * page + int(last[b])
            qs, qe = int(qo_indptr[b]), int(qo_indptr[b + 1])
            k, v = (c[pages].flatten(0, 1)[:n_k].float().repeat_interleave(hq // hk, 1).transpose(0, 1)
                    for c in (k_cache, v_cache))
            k_pos = torch.arange(n_k, device=q.device)[None, :]
            q_pos = torch.arange(n_k - (qe - qs), n_k, device=q.device)[:, None]
            mask = k_pos <= q_pos
            if window_left >= 0:
                mask &= k_pos >= q_pos - window_left
            o = F.scaled_dot_product_attention(q[qs:qe].float().transpose(0, 1), k, v, attn_mask=mask, scale=scale)
            out[qs:qe] = o.transpose(0, 1).to(out.dtype)
        return out


@pytest.fixture
def documented(monkeypatch):
    monkeypatch.setitem(libs._modules, "flashinfer",
                        type("FlashInfer", (), {"BatchPrefillWithPagedKVCacheWrapper": DocumentedPrefill}))
    monkeypatch.setattr(fi, "_plans", {})
    DocumentedPrefill.plans = 0


@pytest.mark.parametrize("window", [0, 1, 17])
def test_wiring_matches_reference(documented, window):
    q, k_cache, v_cache, meta = paged_batch(SEQS, 4, 2, 32, 16, torch.bfloat16)
    out = fi.flashinfer_paged_attention(q, k_cache, v_cache, meta, 32**-0.5, torch.empty_like(q), window=window)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 32**-0.5, window=window)
    assert_close(out, ref, torch.bfloat16)


def test_leading_decodes_go_to_our_decode_kernel(documented):
    """Batches lead with their decode rows; those run on our decode kernel, the rest on FlashInfer's."""
    seqs = [(1, 513), (1, 40), (20, 300), (1, 7), (5, 5)]
    q, k_cache, v_cache, meta = paged_batch(seqs, 4, 2, 32, 16, torch.bfloat16)
    out = fi.flashinfer_paged_attention(q, k_cache, v_cache, meta, 32**-0.5, torch.empty_like(q), window=8)
    assert DocumentedPrefill.planned_seqs == 3
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 32**-0.5, window=8)
    assert_close(out, ref, torch.bfloat16)


def test_planned_once_per_batch(documented):
    """Every layer of a stretch shares one plan; a new batch, window or head shape plans again, and
    the host arrays a batch carries are what get planned."""
    q, k_cache, v_cache, meta = paged_batch(SEQS, 4, 2, 32, 16, torch.bfloat16)
    out = torch.empty_like(q)
    for _ in range(3):
        fi.flashinfer_paged_attention(q, k_cache, v_cache, meta, 32**-0.5, out)
    assert DocumentedPrefill.plans == 1
    fi.flashinfer_paged_attention(q, k_cache, v_cache, meta, 32**-0.5, out, window=8)
    assert DocumentedPrefill.plans == 2
    meta.host = (meta.query_start_loc.cpu().numpy(), meta.seq_lens.cpu().numpy(), meta.block_tables.cpu().numpy())
    other = type(meta)(**vars(meta))
    fi.flashinfer_paged_attention(q, k_cache, v_cache, other, 32**-0.5, out, window=8)
    assert DocumentedPrefill.plans == 3
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 32**-0.5, window=8)
    assert_close(out, ref, torch.bfloat16)


needs_flashinfer = pytest.mark.skipif(DEVICE != "cuda" or libs.imported("flashinfer") is None,
                                      reason="needs FlashInfer and CUDA")


@needs_flashinfer
@pytest.mark.parametrize("window", [0, 128])
@pytest.mark.parametrize("seqs", [SEQS + [(1, 4096), (777, 1200)], [(1, 4096), (1, 300)] + SEQS + [(777, 1200)]])
def test_real_flashinfer_matches_reference(window, seqs):
    q, k_cache, v_cache, meta = paged_batch(seqs, 32, 4, 128, 16, torch.bfloat16)
    q, k_cache, v_cache = q.cuda(), k_cache.cuda(), v_cache.cuda()
    meta = type(meta)(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in vars(meta).items()})
    assert fi.flashinfer_can_serve(q, k_cache, meta, None, window)
    out = K.paged_attention(q, k_cache, v_cache, meta, 128**-0.5, window=window, chosen={"prefill": "flashinfer",
                                                                                          "sinks": "flashinfer"})
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 128**-0.5, window=window)
    assert_close(out, ref, torch.bfloat16)


@needs_flashinfer
def test_real_flashinfer_leaves_decode_sinks_and_switched_off_to_ours(monkeypatch):
    decode = paged_batch([(1, 40), (1, 17)], 8, 2, 64, 16, torch.bfloat16)
    prompt = paged_batch([(3, 40), (1, 17)], 8, 2, 64, 16, torch.bfloat16)
    assert not fi.flashinfer_can_serve(decode[0].cuda(), decode[1].cuda(), decode[3], None, 0)
    assert not fi.flashinfer_can_serve(prompt[0].cuda(), prompt[1].cuda(), prompt[3], torch.zeros(8, device="cuda"), 0)
    never = (fi.flashinfer_can_serve, lambda *a: pytest.fail("FlashInfer was called"))
    monkeypatch.setitem(attention.LIBRARIES, "flashinfer", never)
    q, k_cache, v_cache = (t.cuda() for t in prompt[:3])
    meta = type(prompt[3])(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in vars(prompt[3]).items()})
    K.paged_attention(q, k_cache, v_cache, meta, 64**-0.5, excluded=frozenset({"flashinfer"}))  # switched off

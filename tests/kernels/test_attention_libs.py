"""Attention library selection and fallback on any machine: the `attention` argument, the measured
table, one warning and our kernels for a library that is missing, fails to import or raises at its
first call; FlashAttention-4's argument wiring against its documented semantics."""
from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close, paged_batch

import laminar_kernels as K
import laminar_kernels.attention as attention
import laminar_kernels.attention_libs as libs
import laminar_kernels.fa4 as fa4
from laminar.config import EngineArgs
from laminar.ops import get_ops
from laminar.ops import torch_ops as R
from laminar.ops.attention_choice import ATTENTION_LIBRARIES, ATTENTION_PATHS, parse_attention

PROMPTS = [(5, 5), (20, 300), (40, 40)]


@pytest.fixture
def fresh(monkeypatch):
    """No library imported or switched off yet, and the warnings they log captured."""
    monkeypatch.setattr(libs, "_modules", {})
    monkeypatch.setattr(libs, "_failed", {})


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "laminar.attention" and r.levelno == logging.WARNING]


def test_parse_attention():
    assert parse_attention("auto") == parse_attention("") == {}
    assert parse_attention("fa4") == dict.fromkeys(ATTENTION_PATHS, "fa4")
    assert parse_attention("prefill=cudnn, decode=triton,sinks=auto") == {"prefill": "cudnn", "decode": "triton"}
    for bad in ("fa5", "prefil=fa4", "prefill=fa4,prefill=cudnn", "prefill=nope"):
        with pytest.raises(ValueError, match="attention"):
            parse_attention(bad)


def test_engine_argument_and_environment(monkeypatch):
    assert EngineArgs(model="x").attention == "auto"
    monkeypatch.setenv("LAMINAR_ATTENTION", "prefill=fa4")
    assert EngineArgs(model="x").attention == "prefill=fa4"
    with pytest.raises(ValueError, match="unknown library"):
        EngineArgs(model="x", attention="prefill=fa3")
    ops = get_ops("cpu", "triton", flash_attn=False, attention="decode=cudnn")
    assert ops.paged_attention.keywords == {"chosen": {"decode": "cudnn"}, "excluded": frozenset({"flash_attn"})}


def test_table_names_known_libraries_for_every_path():
    """Each GPU entry lists, per path, libraries the dispatcher knows; an unknown GPU gets the
    default entry, and no GPU (CPU) none at all."""
    for gpu, entry in libs.table().items():
        for path in ATTENTION_PATHS:
            assert set(entry[path]) <= set(ATTENTION_LIBRARIES) and set(entry[path]) - {"triton"} <= set(attention.LIBRARIES)
    assert libs.measured_order("Some Future GPU", "prefill") == tuple(libs.table()["default"]["prefill"])
    assert libs.measured_order(None, "prefill") == ()
    assert libs.order(torch.device("cpu"), "decode", {"decode": "cudnn"}, frozenset()) == ("cudnn",)
    assert libs.order(torch.device("cpu"), "decode", {"decode": "cudnn"}, frozenset({"cudnn"})) == ()
    assert libs.order(torch.device("cpu"), "decode", {"decode": "triton"}, frozenset()) == ()


def test_attention_path():
    q, k_cache, v_cache, meta = paged_batch([(1, 40), (1, 17)], 4, 2, 32, 16, torch.float32)
    assert attention.attention_path(meta, None, 0) == "decode"
    assert attention.attention_path(meta, None, 8) == "sinks"
    _, _, _, meta = paged_batch(PROMPTS, 4, 2, 32, 16, torch.float32)
    assert attention.attention_path(meta, None, 0) == "prefill"
    assert attention.attention_path(meta, torch.zeros(4), 0) == "sinks"


def test_library_that_raises_falls_back_with_one_warning(fresh, monkeypatch, caplog):
    """A library that raises at its first call (a JIT compile that fails here) serves nothing more:
    that batch and the next come from our kernels, with one warning in all."""
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("compile failed")

    monkeypatch.setitem(attention.LIBRARIES, "fa4", (lambda *a: True, broken))
    q, k_cache, v_cache, meta = paged_batch(PROMPTS, 4, 2, 32, 16, torch.bfloat16)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 32**-0.5)
    with caplog.at_level(logging.WARNING, logger="laminar.attention"):
        for _ in range(2):
            out = K.paged_attention(q, k_cache, v_cache, meta, 32**-0.5, chosen={"prefill": "fa4"})
            assert_close(out, ref, torch.bfloat16)
    assert len(calls) == 1 and "fa4" in libs.failed()
    assert len(warnings_of(caplog)) == 1 and "compile failed" in warnings_of(caplog)[0]


def test_library_that_fails_to_import_falls_back_with_one_warning(fresh, monkeypatch, tmp_path, caplog):
    """An installed library whose import raises (not only ImportError) is warned about once; one
    that is not installed at all is not warned about. Our kernels serve either way."""
    (tmp_path / "laminar_broken_lib.py").write_text("raise OSError('libcuda.so: wrong version')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(libs.MODULES, "fa4", "laminar_broken_lib")
    monkeypatch.setitem(libs.MODULES, "cudnn", "laminar_no_such_lib")
    with caplog.at_level(logging.DEBUG, logger="laminar.attention"):
        assert libs.imported("fa4") is None and libs.imported("fa4") is None
        assert libs.imported("cudnn") is None
    assert len(warnings_of(caplog)) == 1 and "wrong version" in warnings_of(caplog)[0]
    assert "cudnn" not in libs.failed()
    sys.modules.pop("laminar_broken_lib", None)


def test_library_that_cannot_serve_is_passed_over(fresh, monkeypatch):
    """Down the line: the first library that can serve the batch does; one that declines is skipped."""
    served = []
    monkeypatch.setitem(attention.LIBRARIES, "cudnn", (lambda *a: False, lambda *a: pytest.fail("cudnn ran")))
    monkeypatch.setitem(attention.LIBRARIES, "fa4", (lambda *a: True, lambda q, *a: served.append(1) or q))
    monkeypatch.setattr(libs, "order", lambda device, path, chosen, excluded: ("cudnn", "fa4"))
    q, k_cache, v_cache, meta = paged_batch(PROMPTS, 4, 2, 32, 16, torch.bfloat16)
    assert K.paged_attention(q, k_cache, v_cache, meta, 32**-0.5) is q and served == [1]


def fa4_as_documented(q, k, v, cu_seqlens_q, seqused_k, max_seqlen_q, max_seqlen_k, page_table, softmax_scale,
                      causal, window_size, learnable_sink):
    """flash_attn.cute.flash_attn_varlen_func as documented for a paged cache: k/v (pages, page,
    Hk, D), page_table (B, pages), seqused_k keys per sequence, causal mask aligned bottom-right,
    window_size (left, right) keys either side of the aligned key (None unbounded), learnable_sink
    one extra logit per head in the softmax denominator; returns (out, lse). Written here
    independently of our reference."""
    assert causal and page_table.dtype == seqused_k.dtype == cu_seqlens_q.dtype == torch.int32
    page, out = k.shape[1], torch.empty_like(q)
    for b in range(page_table.shape[0]):
        qs, qe, n_k = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1]), int(seqused_k[b])
        assert qe - qs <= max_seqlen_q and n_k <= max_seqlen_k
        pages = page_table[b, : -(-n_k // page)].long()
        groups = q.shape[1] // k.shape[2]
        kk, vv = (c[pages].flatten(0, 1)[:n_k].float().repeat_interleave(groups, 1).transpose(0, 1) for c in (k, v))
        k_pos = torch.arange(n_k, device=q.device)[None, :]
        q_pos = torch.arange(n_k - (qe - qs), n_k, device=q.device)[:, None]
        mask = k_pos <= q_pos
        if window_size[0] is not None:
            mask &= k_pos >= q_pos - window_size[0]
        scores = (q[qs:qe].float().transpose(0, 1) @ kk.transpose(1, 2)) * softmax_scale
        scores = scores.masked_fill(~mask, float("-inf"))
        if learnable_sink is not None:
            sink = learnable_sink.float()[:, None, None].expand(-1, qe - qs, 1)
            probs = torch.softmax(torch.cat([scores, sink], -1), -1)[..., :-1]
        else:
            probs = F.softmax(scores, -1)
        out[qs:qe] = (probs @ vv).transpose(0, 1).to(q.dtype)
    return out, None


@pytest.mark.parametrize("window, with_sinks", [(0, False), (17, False), (8, True), (0, True)])
def test_fa4_wiring_matches_reference(fresh, monkeypatch, window, with_sinks):
    monkeypatch.setitem(libs._modules, "fa4", SimpleNamespace(flash_attn_varlen_func=fa4_as_documented))
    q, k_cache, v_cache, meta = paged_batch(PROMPTS + [(1, 513)], 4, 2, 32, 16, torch.bfloat16)
    sinks = torch.randn(4, device=DEVICE) if with_sinks else None
    out = fa4.fa4_paged_attention(q, k_cache, v_cache, meta, 32**-0.5, torch.empty_like(q), sinks, window)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 32**-0.5, sinks=sinks, window=window)
    assert_close(out, ref, torch.bfloat16)


MIXED = [(1, 513), (1, 40), (1, 4096), (20, 300), (5, 5), (777, 1200), (64, 64)]  # decodes lead, then prompts


@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA and the libraries")
@pytest.mark.parametrize("name", ["flashinfer", "fa4", "cudnn"])
@pytest.mark.parametrize("seqs", [MIXED, MIXED[:3], MIXED[3:]], ids=["mixed", "decode", "prefill"])
@pytest.mark.parametrize("window, with_sinks", [(0, False), (128, False), (128, True), (0, True)])
def test_real_library_matches_reference(name, seqs, window, with_sinks):
    """Each installed library, where it claims a batch, agrees with the reference: mixed batches
    (decodes first, cached prefixes, fresh prompts), decode-only and prompt-only ones. Slots past a
    context hold large finite garbage (the engine's cache is never NaN; libraries that read whole
    pages multiply it by a zero probability)."""
    if libs.imported(name) is None:
        pytest.skip(f"{name} is not installed")
    q, k_cache, v_cache, meta = paged_batch(seqs, 32, 4, 128, 16, torch.bfloat16)
    k_cache, v_cache = k_cache.nan_to_num(1e3), v_cache.nan_to_num(1e3)
    sinks = torch.randn(32, device=DEVICE) if with_sinks else None
    can_serve, run = attention.LIBRARIES[name]
    if not can_serve(q, k_cache, meta, sinks, window):
        pytest.skip(f"{name} does not serve this batch")
    out = run(q, k_cache, v_cache, meta, 128**-0.5, torch.empty_like(q), sinks, window)
    ref = R.paged_attention(q.float(), k_cache.float(), v_cache.float(), meta, 128**-0.5, sinks=sinks, window=window)
    assert_close(out, ref, torch.bfloat16)
    assert name not in libs.failed()

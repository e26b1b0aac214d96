"""FlashInfer's MXFP4 MoE on any machine: the `moe` argument and measured table, the load-time re-layout
(its row order, padding and scale interleave, checked by running its documented semantics in torch),
and the fallback to our kernel with one warning. tests/gpu/test_flashinfer_moe_gpu.py runs it for real."""
from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from engine_utils import greedy, make_engine, run_to_completion
from helpers import DEVICE, assert_close
from test_moe_gpt_oss import SWIGLU, _inputs, _reference

import laminar_kernels as K
import laminar_kernels.attention_libs as libs
import laminar_kernels.flashinfer_moe as fim
from laminar.config import EngineArgs
from laminar.ops import MOE_CHOICES, get_ops
from laminar.ops import torch_ops as R

SHAPE = (13, 8, 4, 96, 64)  # tokens, E, top_k, H, I: neither H nor I a multiple of 128


@pytest.fixture
def fresh(monkeypatch):
    """No library imported or switched off yet."""
    monkeypatch.setattr(libs, "_modules", {})
    monkeypatch.setattr(libs, "_failed", {})


def _prepared(ranges: tuple[tuple[int, int], ...], hidden: int = 0) -> fim.Prepared:
    """A stand-in serving these token counts (its tensors unused: the tests replace fim.fused_moe)."""
    empty = torch.empty(0)
    return fim.Prepared(w13=empty, w2=empty, scales=[], b13=None, b2=None, swiglu=None, hidden=hidden, ranges=ranges)


def test_engine_argument(monkeypatch):
    assert EngineArgs(model="x").moe == "auto" and MOE_CHOICES == ("auto", "triton", "flashinfer")
    monkeypatch.setenv("LAMINAR_MOE", "flashinfer")
    assert EngineArgs(model="x").moe == "flashinfer"
    with pytest.raises(ValueError, match="moe must be one of"):
        EngineArgs(model="x", moe="cutlass")
    assert get_ops("cpu", "triton", moe="flashinfer").prepare_experts.keywords == {"choice": "flashinfer"}
    assert get_ops("cpu", "triton", flashinfer=False, moe="flashinfer").prepare_experts.keywords == {"choice": "triton"}
    assert get_ops("cpu", "torch").prepare_experts(None, None, None, None) is None
    with pytest.raises(ValueError, match="moe"):
        get_ops("cpu", "triton", moe="nope")


def test_table_lists_token_ranges():
    """Every entry names ranges [first, last] of MoE tokens; the default one serves GPUs not measured."""
    gpus = libs.table(fim.TABLE)
    assert "default" in gpus
    for entry in gpus.values():
        assert all(1 <= lo <= hi for lo, hi in entry["flashinfer"]) and entry.get("source")


def test_token_ranges(monkeypatch, tmp_path):
    cuda = torch.device("cuda")
    assert fim.token_ranges("triton", cuda) == () and fim.token_ranges("flashinfer", torch.device("cpu")) == ()
    assert fim.token_ranges("flashinfer", cuda)[0][0] == 1
    table = tmp_path / "moe.json"
    table.write_text(json.dumps({"gpus": {"default": {"flashinfer": []}, "GPU X": {"flashinfer": [[1, 64], [4096, 8192]]}}}))
    monkeypatch.setattr(fim, "TABLE", table)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU X")
    assert fim.token_ranges("auto", cuda) == ((1, 64), (4096, 8192))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU Y")
    assert fim.token_ranges("auto", cuda) == ()


def test_serves_its_ranges_until_it_fails(fresh):
    p = _prepared(((1, 64), (4096, 8192)))
    assert [p.serves(n) for n in (1, 64, 65, 4095, 4096, 8192, 8193)] == [True, True, False, False, True, True, False]
    libs.fail(fim.NAME, RuntimeError("boom"))
    assert not p.serves(1) and "flashinfer" not in libs.failed()  # its attention stays on


def test_prepare_declines_where_it_cannot_serve(fresh):
    x, up, down, b13, b2, weights, ids = _inputs(*SHAPE, dtype=torch.bfloat16)
    assert fim.prepare(*up, *down, b13, b2, SWIGLU, choice="triton") is None
    on_cpu = [t.cpu() for t in (*up, *down, b13, b2)]
    assert fim.prepare(*on_cpu, SWIGLU, choice="flashinfer") is None
    dense = R.dequantize_mxfp4(*up, torch.bfloat16), R.dequantize_mxfp4(*down, torch.bfloat16)
    assert fim.prepare(dense[0], None, dense[1], None, b13, b2, SWIGLU, choice="flashinfer") is None


def test_interleave_scales_puts_four_groups_of_a_row_together():
    scales = torch.randint(0, 256, (2, 5, 8), dtype=torch.uint8)
    out = fim.interleave_scales(scales)
    assert out.shape == (2, 2, 20)
    for row in range(5):
        for group in range(8):
            assert torch.equal(out[:, group // 4, 4 * row + group % 4], scales[:, row, group])


def _uninterleave(scales: torch.Tensor) -> torch.Tensor:
    """[E, G/4, 4N] -> [E, N, G], the inverse of interleave_scales."""
    e, quads, n4 = scales.shape
    return scales.reshape(e, quads, n4 // 4, 4).transpose(1, 2).reshape(e, n4 // 4, quads * 4)


def _dequantize(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """FlashInfer's bytes [E, N, K/2] (before its weight interleave) and interleaved scales -> fp32 [E, N, K]."""
    e, n, half = packed.shape
    return R.dequantize_mxfp4(packed.reshape(e, n, half // 16, 16), _uninterleave(scales), torch.float32)


def _flashinfer_semantics(x, r: fim.Relayout, weights, ids, alpha, beta, limit) -> torch.Tensor:
    """What its kernel computes on these operands, written from its source: fc1 rows [linear | gate],
    min(g, L) * sigmoid(alpha min(g, L)) * (clamp(lin, -L, L) + beta), fc2, biases, the routing weights."""
    w13, w2 = _dequantize(r.w13, r.s13), _dequantize(r.w2, r.s2)
    xp = F.pad(x.float(), (0, w13.shape[2] - x.shape[1]))
    out = torch.zeros(x.shape[0], w2.shape[1])
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].tolist(), ids[t].tolist()):
            linear, gate = (xp[t] @ w13[e].t() + r.b13[e].float()).chunk(2)
            gate = gate.clamp(max=limit)
            act = gate * torch.sigmoid(alpha * gate) * (linear.clamp(-limit, limit) + beta)
            out[t] += w * (act @ w2[e].t() + r.b2[e].float())
    return out[:, : x.shape[1]]


def test_relayout_gives_the_reference_under_its_semantics():
    """Up and gate swapped, K and N padded to 128 with zeros (so padded channels add nothing), scales
    interleaved, biases moved with their rows: its activation on these operands is our MoE."""
    x, up, down, b13, b2, weights, ids = _inputs(*SHAPE, dtype=torch.float32)
    r = fim.relayout(*up, *down, b13, b2, torch.float32)
    e, _, h, inter = SHAPE[1], *SHAPE[2:]
    assert r.w13.shape == (e, 2 * 128, 128 // 2) and r.s13.shape == (e, 1, 2 * 128 * 4)
    assert r.w2.shape == (e, 128, 128 // 2) and r.s2.shape == (e, 1, 128 * 4)
    assert r.b13.shape == (e, 256) and r.b2.shape == (e, 128)
    assert not r.w13[:, inter:128].any() and not r.w13[:, 128 + inter:].any() and not r.w2[:, h:].any()
    assert not r.w13[..., h // 2:].any() and not r.w2[..., inter // 2:].any()
    out = _flashinfer_semantics(x.cpu(), r.__class__(*(t.cpu() for t in r)), weights.cpu(), ids.cpu(),
                                SWIGLU[0], 1.0, SWIGLU[1])
    torch.testing.assert_close(out, _reference(x, up, down, b13, b2, weights, ids).cpu(), rtol=1e-4, atol=1e-4)
    assert fim.relayout(*up, *down, b13, b2, torch.bfloat16).b13.dtype == torch.bfloat16


def test_relayout_gives_a_down_bias_to_ranks_without_one():
    """TP ranks other than 0 hold no down bias; FlashInfer takes both or neither, so those get zeros."""
    _, up, down, b13, _, _, _ = _inputs(*SHAPE, dtype=torch.bfloat16)
    r = fim.relayout(*up, *down, b13, None, torch.bfloat16)
    assert r.b2.shape == (SHAPE[1], 128) and not r.b2.any()
    assert fim.relayout(*up, *down, None, None, torch.bfloat16).b13 is None


def _moe_args(dtype: torch.dtype = torch.bfloat16):
    x, up, down, b13, b2, weights, ids = _inputs(*SHAPE, dtype=dtype)
    kwargs = dict(b13=b13, b2=b2, w13_scales=up[1], w2_scales=down[1], swiglu=SWIGLU)
    return (x, up[0], down[0], weights, ids), kwargs, _reference(x, up, down, b13, b2, weights, ids)


def test_served_calls_go_to_flashinfer(fresh, monkeypatch):
    args, kwargs, ref = _moe_args()
    served = []
    monkeypatch.setattr(fim, "fused_moe", lambda x, w, i, p: served.append(x.shape[0]) or torch.zeros_like(x))
    assert not K.fused_moe(*args, **kwargs, prepared=_prepared(((1, 64),))).any()
    assert_close(K.fused_moe(*args, **kwargs, prepared=_prepared(((14, 64),))), ref, torch.bfloat16)
    assert served == [SHAPE[0]]


def test_failing_call_falls_back_with_one_warning(fresh, monkeypatch, caplog):
    """FlashInfer raising at a call (a JIT build that fails here, a shape it rejects): that call and
    every later one come from our kernel, with one warning in all, and FlashInfer's attention stays on."""
    args, kwargs, ref = _moe_args()
    calls = []

    def broken(*a):
        calls.append(1)
        raise RuntimeError("cutlass build failed")

    monkeypatch.setattr(fim, "fused_moe", broken)
    prepared = _prepared(((1, 1 << 20),))
    with caplog.at_level(logging.WARNING, logger="laminar.attention"):
        for _ in range(2):
            assert_close(K.fused_moe(*args, **kwargs, prepared=prepared), ref, torch.bfloat16)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(calls) == 1 and len(warnings) == 1 and "cutlass build failed" in warnings[0]
    assert fim.NAME in libs.failed() and "flashinfer" not in libs.failed()


def test_failing_import_leaves_prepare_to_ours(fresh, monkeypatch, tmp_path, caplog):
    """An installed FlashInfer whose import raises: prepare warns once and returns None (no copy made)."""
    (tmp_path / "laminar_broken_fi.py").write_text("raise OSError('libcudart.so.13: not found')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(libs.MODULES, fim.NAME, "laminar_broken_fi")
    monkeypatch.setattr(fim, "_hopper", lambda device: True)
    monkeypatch.setattr(fim, "token_ranges", lambda choice, device: ((1, 8),))
    _, up, down, b13, b2, _, _ = _inputs(*SHAPE, dtype=torch.bfloat16)
    with caplog.at_level(logging.WARNING, logger="laminar.attention"):
        assert fim.prepare(*up, *down, b13, b2, SWIGLU, choice="flashinfer") is None
        assert fim.prepare(*up, *down, b13, b2, SWIGLU, choice="flashinfer") is None
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_engine_prepares_release_form_and_passes_it_to_every_call(gpt_oss_mxfp4, fresh, monkeypatch):
    """The model hands each MoE layer's checkpoint-form experts (biases, SwiGLU) to prepare_experts
    before our kernel's re-layout, and every fused MoE call gets what it returned: a stand-in library
    that computes the reference from them gives the torch ops' tokens."""
    prepared_layers, calls = [], []

    def prepare(w13, s13, w2, s2, b13, b2, swiglu, choice):
        assert w13.dim() == 4 and s13.dim() == 3 and swiglu == (1.702, 7.0) and choice == "flashinfer"
        prepared_layers.append((w13.clone(), s13.clone(), w2.clone(), s2.clone(), b13, b2, swiglu))
        return _prepared(((1, 1 << 20),), hidden=len(prepared_layers) - 1)

    def run(x, weights, ids, p):
        calls.append(p.hidden)
        w13, s13, w2, s2, b13, b2, swiglu = prepared_layers[p.hidden]
        return R.fused_moe(x, w13, w2, weights, ids, b13=b13, b2=b2, w13_scales=s13, w2_scales=s2, swiglu=swiglu)

    monkeypatch.setattr(K, "prepare_experts", prepare)
    monkeypatch.setattr(fim, "fused_moe", run)
    prompts = {0: [(f"r{i}", list(range(3 + i, 20 + 3 * i)), greedy(3)) for i in range(2)]}
    tokens = {}
    for ops in ("triton", "torch"):
        monkeypatch.setenv("LAMINAR_OPS", ops)
        # Eager: the stand-in library runs the torch reference, whose host copies graph capture refuses.
        engine = make_engine(gpt_oss_mxfp4, device=DEVICE, moe="flashinfer", num_stages=1, group_token_thresholds=(),
                             enforce_eager=True)
        tokens[ops] = run_to_completion(engine, prompts)
    assert prepared_layers and set(calls) == set(range(len(prepared_layers))) and tokens["triton"] == tokens["torch"]

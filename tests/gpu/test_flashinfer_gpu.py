"""The engine with FlashInfer serving its prompt batches agrees with our kernels alone (device
and FlashInfer only). The demo model's heads (32 wide) are below FlashInfer's sizes, so this
runs the demo's shape with 64-wide heads on dummy weights."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from engine_utils import LogitsRecorder, make_engine, random_arrivals, run_to_completion

from laminar.demo import write_demo_checkpoint
from laminar.demo.checkpoint import FILES

# No kernel import at collection: on a CPU run, tests/kernels/conftest.py must be the first to
# import them (it switches Triton to its interpreter before any @triton.jit runs).
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def wide_heads(tmp_path_factory):
    demo = write_demo_checkpoint(tmp_path_factory.mktemp("demo"), trained=False)
    out = tmp_path_factory.mktemp("wide")
    for name in FILES:
        if name != "model.safetensors":
            shutil.copy(demo / name, out / name)
    cfg = json.loads((out / "config.json").read_text())
    cfg["head_dim"] = 64
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_flashinfer_engine_agrees_with_ours(wide_heads, mode, monkeypatch):
    """Each request's first logits (its prompt's last row, computed by FlashInfer in one engine and
    our prefill kernel in the other) agree to bf16 rounding; FlashInfer did serve the prompts."""
    import laminar_kernels.attention as attention
    import laminar_kernels.attention_libs as libs

    if libs.imported("flashinfer") is None:
        pytest.skip("needs FlashInfer")
    calls = []
    can_serve, real = attention.LIBRARIES["flashinfer"]
    monkeypatch.setitem(attention.LIBRARIES, "flashinfer", (can_serve, lambda *a: calls.append(1) or real(*a)))
    monkeypatch.setenv("LAMINAR_ATTENTION", "prefill=flashinfer")  # whatever this GPU's table prefers
    workload = random_arrivals(7, 10, range(3, 2048), max_prompt=300, last_step=6, max_tokens=8)
    args = dict(schedule_mode=mode, num_stages=3, group_token_thresholds=(), max_num_batched_tokens=256,
                block_size=16, num_kv_blocks=256, dtype="bfloat16", device="cuda", load_format="dummy", seed=3)
    firsts = []
    for env in ("0", "1"):
        monkeypatch.setenv("LAMINAR_FLASHINFER", env)
        engine = make_engine(wide_heads, **args)
        recorder = LogitsRecorder(engine)
        run_to_completion(engine, workload)
        firsts.append({key: rows[0].float() for key, rows in recorder.logits.items()})
        assert bool(calls) == (env == "1")
    ours, theirs = firsts
    assert ours.keys() == theirs.keys() and len(ours) == 10
    for key in ours:
        err = ((ours[key] - theirs[key]).norm() / ours[key].norm()).item()
        assert err < 2e-2, err

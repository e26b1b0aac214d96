"""Tensor parallelism on the CPU (gloo): real worker processes, sharded weights, same tokens as TP1."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from laminar import SamplingParams
from laminar.config import EngineArgs
from laminar.engine import LLMEngine
from laminar.step_inputs import SegmentInputs, StepInputs, pack, unpack
from laminar.worker_group import PARENT_ENV

PROMPTS = [[(7 * i + 3 * j) % 250 + 1 for j in range(n)] for i, n in enumerate((5, 33, 12, 70, 2, 41))]


def make_engine(model: Path, tp: int, **overrides) -> LLMEngine:
    values = dict(model=str(model), dtype="float32", device="cpu", tensor_parallel_size=tp,
                  max_num_batched_tokens=64, max_num_seqs=8, num_stages=3, group_token_thresholds=(),
                  num_kv_blocks=64, block_size=4, max_model_len=256)
    values.update(overrides)
    return LLMEngine(EngineArgs(**values))


def run_script(engine: LLMEngine, abort_after: dict[str, int] | None = None, max_tokens: int = 6) -> dict[str, list[int]]:
    """Half the prompts at once, the rest two steps later; optional aborts after n steps. Always shuts down."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    got: dict[str, list[int]] = {}
    try:
        for i, prompt in enumerate(PROMPTS[:3]):
            engine.add_request(f"r{i}", prompt, params)
        step = 0
        while engine.has_unfinished_requests() or step < 3:
            if step == 2:
                for i, prompt in enumerate(PROMPTS[3:], start=3):
                    engine.add_request(f"r{i}", prompt, params)
            for rid, at in (abort_after or {}).items():
                if step == at:
                    engine.abort(rid)
            for out in engine.step():
                got.setdefault(out.request_id, []).extend(out.new_token_ids)
            step += 1
        assert engine.blocks.num_free == engine.executor.runner.num_blocks
    finally:
        engine.shutdown()
    return got


@pytest.mark.parametrize("mode, slo", [("layered", None), ("chunked", None), ("layered", 1e-3)])
def test_tp2_matches_tp1(moe_checkpoint_5, mode, slo):
    """slo: a target below any step's time, so the SLO policy moves prompts one layer per step."""
    expected = run_script(make_engine(moe_checkpoint_5, 1, schedule_mode=mode))
    policy = dict(prefill_policy="slo", tbt_slo_ms=slo, num_stages=None, group_token_thresholds=None) if slo else {}
    engine = make_engine(moe_checkpoint_5, 2, schedule_mode=mode, **policy)
    assert [p.poll() for p in engine.executor.workers.procs] == [None]
    assert run_script(engine) == expected
    assert [p.returncode for p in engine.executor.workers.procs] == [0]  # stopped on request, not killed
    assert worker_pids() == []


@pytest.mark.parametrize("fixture", ["gpt_oss_mxfp4", "gpt_oss_bf16"])
def test_tp2_matches_tp1_gpt_oss(fixture, request):
    """GPT-OSS: sinks and qkv biases split by head, row-parallel biases on rank 0 only, experts (MXFP4 blocks
    and scales alike) split along the intermediate dimension."""
    model = request.getfixturevalue(fixture)
    expected = run_script(make_engine(model, 1))
    assert run_script(make_engine(model, 2)) == expected


def test_tp4_replicates_kv_heads_dense(dense_checkpoint):
    """2 KV heads over 4 ranks: each KV head lives on two ranks; vocab 257 pads the last rank."""
    expected = run_script(make_engine(dense_checkpoint, 1))
    engine = make_engine(dense_checkpoint, 4)
    assert engine.executor.runner.model.layout.num_kv_heads == 1 and engine.executor.runner.model.layout.vocab_per_rank == 65
    assert run_script(engine) == expected


def test_abort_mid_prefill_selects_carried_rows(moe_checkpoint_5):
    """r1 is dropped while its batch is between groups: the other rows continue on every rank."""
    aborts = {"r1": 1}
    expected = run_script(make_engine(moe_checkpoint_5, 1), aborts)
    assert "r1" not in expected
    assert run_script(make_engine(moe_checkpoint_5, 2), aborts) == expected


def stacked_copy(src: Path, dst: Path) -> Path:
    """The same weights under transformers' stacked expert names ([E, 2I, H] and [E, H, I])."""
    shutil.copytree(src, dst)
    for path in dst.glob("*.safetensors"):
        tensors = load_file(path)
        layers = {k.split(".mlp.experts.")[0] for k in tensors if ".mlp.experts." in k}
        for layer in layers:
            n = len({k for k in tensors if k.startswith(f"{layer}.mlp.experts.") and k.endswith("down_proj.weight")})
            pick = lambda e, proj: tensors.pop(f"{layer}.mlp.experts.{e}.{proj}.weight")  # noqa: E731
            gate_up = [torch.cat((pick(e, "gate_proj"), pick(e, "up_proj"))) for e in range(n)]
            tensors[f"{layer}.mlp.experts.gate_up_proj"] = torch.stack(gate_up)
            tensors[f"{layer}.mlp.experts.down_proj"] = torch.stack([pick(e, "down_proj") for e in range(n)])
        save_file(tensors, path)
    return dst


def test_stacked_expert_checkpoint_shards(moe_checkpoint_5, tmp_path):
    expected = run_script(make_engine(moe_checkpoint_5, 1))
    stacked = stacked_copy(moe_checkpoint_5, tmp_path / "stacked")
    assert run_script(make_engine(stacked, 2)) == expected


def test_dead_worker_fails_the_step_and_leaves_nothing(moe_checkpoint_5):
    engine = make_engine(moe_checkpoint_5, 2)
    engine.add_request("a", PROMPTS[1], SamplingParams(max_tokens=4))
    engine.step()
    worker = engine.executor.workers.procs[0]
    worker.kill()
    worker.wait()
    with pytest.raises(RuntimeError, match="worker rank 1 exited"):
        engine.step()
    engine.shutdown()
    assert engine.blocks.num_free == engine.executor.runner.num_blocks
    assert worker_pids() == []


def worker_pids() -> list[int]:
    """This process's live tensor-parallel workers, found through /proc rather than the engine."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if PARENT_ENV.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    pids.append(int(pid))
            except OSError:  # exited meanwhile
                pass
    return pids


def test_failed_construction_stops_the_workers(moe_checkpoint_5):
    with pytest.raises(ValueError, match="KV cache holds"):
        make_engine(moe_checkpoint_5, 2, num_kv_blocks=8)
    assert worker_pids() == []


@pytest.mark.parametrize("tp, what", [(8, "num_attention_heads"), (3, "num_key_value_heads")])
def test_indivisible_shapes_are_rejected_before_spawning(moe_checkpoint_5, tp, what):
    with pytest.raises(ValueError, match=what):
        make_engine(moe_checkpoint_5, tp)


def test_step_inputs_round_trip():
    segments = [SegmentInputs(7, 1, range(2, 4), [0, 2]), SegmentInputs(9, 1, range(0, 3), None)]
    inputs = StepInputs(token_ids=[5, 6, 7, 8], starts=[9, 0, 3, 0], q_lens=[1, 1, 2, 2],
                        block_tables=[[4, 2, 7], [1], [], [3]], num_decode=2, segments=segments, carried=[7, 9],
                        logits_rows=[0, 1])
    assert unpack(pack(inputs)) == inputs
    inputs.segments, inputs.carried = [], []
    assert unpack(pack(inputs)) == inputs


def test_workers_exit_when_rank0_is_killed(moe_checkpoint_5):
    """SIGKILL of the engine's process (no shutdown at all): its worker still goes away."""
    script = (
        "import os, sys, signal; sys.path.insert(0, sys.argv[2]); from test_tp import make_engine\n"
        "e = make_engine(sys.argv[1], 2)\n"
        "print(e.executor.workers.procs[0].pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(moe_checkpoint_5), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    worker = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _running(worker):
        time.sleep(0.2)
    assert not _running(worker)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init, but not instantly)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_idle_longer_than_the_collective_timeout(moe_checkpoint_5, monkeypatch):
    """Workers wait for the next step without a deadline: an idle server must not lose them."""
    monkeypatch.setenv("LAMINAR_TP_TIMEOUT_S", "2")  # EngineArgs.tp_timeout_s, unset, reads it
    engine = make_engine(moe_checkpoint_5, 2)
    try:
        engine.add_request("a", PROMPTS[1], SamplingParams(max_tokens=2, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        time.sleep(4)
        engine.add_request("b", PROMPTS[2], SamplingParams(max_tokens=2, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        assert engine.executor.workers.procs[0].poll() is None
    finally:
        engine.shutdown()


def test_second_tp_engine_in_one_process_is_refused(moe_checkpoint_5):
    first = make_engine(moe_checkpoint_5, 2)
    try:
        with pytest.raises(ValueError, match="one multi-rank engine per process"):
            make_engine(moe_checkpoint_5, 2)
        assert worker_pids() == [first.executor.workers.procs[0].pid]
        first.add_request("a", PROMPTS[0], SamplingParams(max_tokens=2))
        while first.has_unfinished_requests():
            first.step()
    finally:
        first.shutdown()
    assert worker_pids() == []

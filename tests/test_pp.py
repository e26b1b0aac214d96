"""Pipeline parallelism on the CPU (gloo): stages of contiguous layers in real worker processes give
the single-process engine's greedy tokens, alone and with TP inside each stage; ranks started as
their own process trees join at a rendezvous address as if on other nodes, survive a restart of
rank 0, and a killed one fails the step with a clear error and leaves nothing hanging. (Prefix
caching under PP2: tests/test_prefix_cache.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from test_tp import PROMPTS, make_engine, run_script, worker_pids

from laminar import SamplingParams
from laminar.distributed import Rendezvous
from laminar.forward_batch import crossing
from laminar.models.causal_lm import MissingLayer
from laminar.pipeline import stage_layers
from laminar.step_inputs import SegmentInputs

SLO = dict(prefill_policy="slo", tbt_slo_ms=1e-3, num_stages=None, group_token_thresholds=None)


def test_stage_layers_and_boundarycrossings():
    assert [stage_layers(5, 2, s) for s in range(2)] == [range(0, 2), range(2, 5)]
    assert [stage_layers(4, 4, s) for s in range(4)] == [range(i, i + 1) for i in range(4)]
    segments = [SegmentInputs(1, 1, range(0, 2), None), SegmentInputs(2, 1, range(1, 4), None),
                SegmentInputs(3, 1, range(2, 5), None)]
    assert crossing(segments, 2) == [0, 1]  # batch 1 stops at the boundary (kept there), batch 2 goes on
    assert crossing(segments, 0) == []


@pytest.mark.parametrize("mode, policy", [("layered", {}), ("chunked", {}), ("layered", SLO)])
def test_pp2_matches_pp1(moe_checkpoint_5, mode, policy):
    """5 layers as [0, 2) + [2, 5): the static policy's 3 groups and the SLO policy's one-layer spans
    cross the stage boundary mid-span and stop exactly at it."""
    expected = run_script(make_engine(moe_checkpoint_5, 1, schedule_mode=mode, **policy))
    engine = make_engine(moe_checkpoint_5, 1, schedule_mode=mode, pipeline_parallel_size=2, **policy)
    model = engine.executor.runner.model
    assert sorted(engine.executor.runner.kv_caches) == [0, 1] and isinstance(model.layers[2], MissingLayer)
    assert model.lm_head is None and model.embed_tokens.shape[0] == 257
    assert run_script(engine) == expected
    assert [p.returncode for p in engine.executor.workers.procs] == [0]
    assert worker_pids() == []


@pytest.mark.parametrize("mode, overlap", [("layered", False), ("chunked", False), ("layered", True)])
def test_tp2_pp2_matches_tp1(moe_checkpoint_5, mode, overlap):
    """overlap: asynchronous scheduling, where the first stage's ranks receive each step's sampled ids."""
    expected = run_script(make_engine(moe_checkpoint_5, 1, schedule_mode=mode))
    engine = make_engine(moe_checkpoint_5, 2, schedule_mode=mode, pipeline_parallel_size=2, async_scheduling=overlap)
    assert engine.executor.runner.model.layout.num_kv_heads == 1
    assert run_script(engine) == expected
    assert worker_pids() == []


def test_pp3_tied_embeddings(tied_checkpoint):
    """One layer per stage: the middle stage holds neither the embedding nor the head, the last one
    the tied embedding as its head."""
    expected = run_script(make_engine(tied_checkpoint, 1))
    assert run_script(make_engine(tied_checkpoint, 1, pipeline_parallel_size=3)) == expected


def test_too_many_stages_are_refused(moe_checkpoint_5):
    with pytest.raises(ValueError, match="pipeline_parallel_size 6 exceeds the model's 5 layers"):
        make_engine(moe_checkpoint_5, 1, pipeline_parallel_size=6)
    with pytest.raises(ValueError, match="need dist_init_addr"):
        make_engine(moe_checkpoint_5, 2, pipeline_parallel_size=2, local_world_size=2)


def start_node(where: Rendezvous, ranks: range, world: int, log) -> list[subprocess.Popen]:
    """Worker ranks as a second node would run them: their own sessions, torchrun-style environment."""
    procs = []
    for local, rank in enumerate(ranks):
        env = dict(os.environ, MASTER_ADDR=where.host, MASTER_PORT=str(where.port), WORLD_SIZE=str(world),
                   RANK=str(rank), LOCAL_RANK=str(local))
        procs.append(subprocess.Popen([sys.executable, "-m", "laminar.worker", "--join-timeout", "5"], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def test_remote_ranks_restart_and_a_killed_rank(moe_checkpoint_5, tmp_path):
    """TP2 x PP2 with stage 1 (ranks 2, 3) on a second "node": TP1's tokens in both modes, across a
    restart of rank 0 that the remote workers wait for; then rank 3 is killed mid-request."""
    where = Rendezvous.loopback()
    remote = dict(pipeline_parallel_size=2, dist_init_addr=f"{where.host}:{where.port}", local_world_size=2,
                  tp_timeout_s=30.0)
    expected = {mode: run_script(make_engine(moe_checkpoint_5, 1, schedule_mode=mode)) for mode in ("layered", "chunked")}
    log = open(tmp_path / "node2.log", "w")
    node = start_node(where, range(2, 4), 4, log)
    try:
        for mode in ("layered", "chunked"):  # the second engine is a restarted rank 0: the same workers rejoin
            assert run_script(make_engine(moe_checkpoint_5, 2, schedule_mode=mode, **remote)) == expected[mode]
            assert all(alive(p) for p in node), (tmp_path / "node2.log").read_text()[-3000:]
        engine = make_engine(moe_checkpoint_5, 2, **remote)
        engine.add_request("a", PROMPTS[1], SamplingParams(max_tokens=50, ignore_eos=True))
        engine.step()
        node[1].kill()
        node[1].wait()
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="ranks 2-3 run on other nodes"):
            while engine.has_unfinished_requests():
                engine.step()
        engine.shutdown()
        assert time.monotonic() - start < 25, "a lost rank must fail the step, not wait out the timeout"
        assert engine.blocks.num_free == engine.executor.runner.num_blocks
        assert worker_pids() == []
        assert alive(node[0]), "the surviving remote rank waits for the next rank 0"
        node[1:] = start_node(where, range(3, 4), 4, log)  # the lost node's rank comes back
        assert run_script(make_engine(moe_checkpoint_5, 2, **remote)) == expected["layered"]
    finally:
        for proc in node:
            if alive(proc):
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()

"""TP2 over NCCL gives TP1's greedy tokens, with CUDA graphs and eagerly (device with 2 GPUs only)."""
from __future__ import annotations

import pytest
import torch
from engine_utils import make_engine, run_to_completion
from test_engine_gpu import workload

from laminar.demo import write_demo_checkpoint

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo"), trained=False)


def finished(engine) -> dict:
    """Runs the shared workload, then stops the engine (and its workers)."""
    try:
        return run_to_completion(engine, workload())
    finally:
        engine.shutdown()


@pytest.mark.parametrize("mode", ["layered", "chunked"])
@pytest.mark.parametrize("eager", [True, False])
def test_tp2_matches_tp1(demo, mode, eager):
    args = dict(schedule_mode=mode, num_stages=3, group_token_thresholds=(), max_num_batched_tokens=256,
                block_size=16, num_kv_blocks=256, dtype="float32", device="cuda", max_num_seqs=12,
                enforce_eager=eager)
    tp1 = finished(make_engine(demo, **args))
    engine = make_engine(demo, tensor_parallel_size=2, **args)
    assert (engine.executor.runner.layers.decode is None) == eager
    assert finished(engine) == tp1
    assert [p.returncode for p in engine.executor.workers.procs] == [0]

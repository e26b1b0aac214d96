"""PP2 over NCCL gives PP1's greedy tokens, with per-stage CUDA graphs and eagerly (2 GPUs); TP2 x PP2
gives TP1's (4 GPUs)."""
from __future__ import annotations

import pytest
import torch
from engine_utils import make_engine
from test_tp_gpu import demo, finished  # noqa: F401  (demo: the module's checkpoint fixture)

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")


def engine_args(mode: str, eager: bool) -> dict:
    return dict(schedule_mode=mode, num_stages=3, group_token_thresholds=(), max_num_batched_tokens=256,
                block_size=16, num_kv_blocks=256, dtype="float32", device="cuda", max_num_seqs=12,
                enforce_eager=eager)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
@pytest.mark.parametrize("eager", [True, False])
def test_pp2_matches_pp1(demo, mode, eager):  # noqa: F811
    pp1 = finished(make_engine(demo, **engine_args(mode, eager)))
    engine = make_engine(demo, pipeline_parallel_size=2, **engine_args(mode, eager))
    assert (engine.executor.runner.layers.decode is None) == eager
    assert finished(engine) == pp1
    assert [p.returncode for p in engine.executor.workers.procs] == [0]


@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs four CUDA devices")
@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_tp2_pp2_matches_tp1(demo, mode):  # noqa: F811
    tp1 = finished(make_engine(demo, **engine_args(mode, False)))
    assert finished(make_engine(demo, tensor_parallel_size=2, pipeline_parallel_size=2, **engine_args(mode, False))) == tp1

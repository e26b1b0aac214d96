"""The engine on CUDA with the Triton kernels gives the CPU reference's greedy tokens (device only)."""
from __future__ import annotations

import random

import pytest
import torch
from engine_utils import greedy, make_engine, random_arrivals, run_to_completion

from laminar.demo import write_demo_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo"), trained=False)


def workload() -> dict[int, list]:
    return random_arrivals(5, 10, range(3, 2048), max_prompt=300, last_step=6, max_tokens=24)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_gpu_fp32_matches_cpu(demo, mode):
    args = dict(schedule_mode=mode, num_stages=3, group_token_thresholds=(), max_num_batched_tokens=256,
                block_size=16, num_kv_blocks=256, dtype="float32")
    cpu = run_to_completion(make_engine(demo, device="cpu", **args), workload())
    gpu = run_to_completion(make_engine(demo, device="cuda", **args), workload())
    assert gpu == cpu


def test_gpu_bf16_agrees_mostly(demo):
    """bf16 rounding may flip a near-tie, so compare first tokens only."""
    args = dict(num_stages=3, group_token_thresholds=(), max_num_batched_tokens=256, block_size=16,
                num_kv_blocks=256)
    cpu = run_to_completion(make_engine(demo, device="cpu", dtype="float32", **args), workload())
    gpu = run_to_completion(make_engine(demo, device="cuda", dtype="bfloat16", **args), workload())
    same = sum(cpu[r][0] == gpu[r][0] for r in cpu)
    assert same >= 0.8 * len(cpu)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_cuda_graphs_match_eager(demo, mode):
    args = dict(schedule_mode=mode, num_stages=3, group_token_thresholds=(), max_num_batched_tokens=256,
                block_size=16, num_kv_blocks=256, dtype="float32", device="cuda", max_num_seqs=12)
    eager_engine = make_engine(demo, enforce_eager=True, **args)
    graph_engine = make_engine(demo, **args)
    assert eager_engine.executor.runner.layers.decode is None and eager_engine.executor.runner.layers.mixed is None
    assert graph_engine.executor.runner.layers.decode is not None and graph_engine.executor.runner.layers.mixed is not None
    eager = run_to_completion(eager_engine, workload())
    graphs = run_to_completion(graph_engine, workload())
    assert graphs == eager
    assert graph_engine.get_stats().expert_bytes_total == eager_engine.get_stats().expert_bytes_total


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_gpu_prefix_cache_matches_cpu_without(demo, mode):
    """Hits on the GPU (the kernels reading a cached prefix as context, in layered mode across the
    layer groups) give the CPU's tokens computed without the cache."""
    rng = random.Random(6)
    systems = [[rng.randrange(3, 2048) for _ in range(n)] for n in (40, 130)]
    arrivals: dict[int, list] = {}
    for i in range(10):
        prompt = rng.choice(systems) + [rng.randrange(3, 2048) for _ in range(rng.randint(1, 60))]
        arrivals.setdefault(2 * i, []).append((f"r{i}", prompt, greedy(rng.randint(1, 12))))
    args = dict(schedule_mode=mode, num_stages=3, group_token_thresholds=(), max_num_batched_tokens=256,
                block_size=16, num_kv_blocks=256, dtype="float32")
    cpu = run_to_completion(make_engine(demo, device="cpu", enable_prefix_caching=False, **args), arrivals)
    engine = make_engine(demo, device="cuda", **args)
    gpu = run_to_completion(engine, arrivals)
    assert gpu == cpu
    assert engine.get_stats().prefix_cache_hits > 0 and engine.blocks.num_free == engine.blocks.num_blocks


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_async_scheduling_matches_sync(demo, mode):
    """CUDA graphs and the kernels, with a KV cache small enough to preempt and an abort mid-run:
    the overlapped engine (pending tokens read on the device, non-blocking copies) gives the
    synchronous one's tokens, and every block is back in the pool."""
    args = dict(schedule_mode=mode, num_stages=3, group_token_thresholds=(), max_num_batched_tokens=256,
                block_size=16, num_kv_blocks=32, max_model_len=512, dtype="float32", device="cuda", max_num_seqs=12)

    def abort(it, engine):
        if it == 8:
            engine.abort("r9")

    sync = run_to_completion(make_engine(demo, async_scheduling=False, **args), workload(), on_step=abort)
    engine = make_engine(demo, async_scheduling=True, **args)
    got = run_to_completion(engine, workload(), on_step=abort)
    assert {r: t for r, t in got.items() if r != "r9"} == {r: t for r, t in sync.items() if r != "r9"}
    assert got["r9"] == sync["r9"][:len(got["r9"])]
    assert engine.stats.num_preemptions > 0 and engine.in_flight is None
    assert engine.blocks.num_free == engine.blocks.num_blocks

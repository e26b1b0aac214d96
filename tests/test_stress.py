"""Randomized workloads: arrivals, aborts at any point, KV pressure (preemption, the bounded KV wait), both modes.

Every request that is not aborted must produce the greedy tokens it produces with no pressure and
no aborts around it, and every KV block must be back in the pool at the end.
"""
from __future__ import annotations

import random

import pytest
from engine_utils import greedy, make_engine


def workload(seed: int) -> tuple[dict[int, list], dict[int, list[str]]]:
    rng = random.Random(seed)
    arrivals: dict[int, list] = {}
    aborts: dict[int, list[str]] = {}
    for i in range(14):
        at = rng.randrange(12)
        prompt = [rng.randrange(1, 257) for _ in range(rng.randint(1, 80))]
        arrivals.setdefault(at, []).append((f"r{i}", prompt, greedy(rng.randint(1, 40))))
        if rng.random() < 0.3:
            aborts.setdefault(at + rng.randrange(8), []).append(f"r{i}")
    return arrivals, aborts


def run(engine, arrivals, aborts) -> dict[str, list[int]]:
    outputs: dict[str, list[int]] = {}
    aborted: set[str] = set()
    it = 0
    while engine.has_unfinished_requests() or any(k >= it for k in arrivals):
        for rid, prompt, params in arrivals.get(it, []):
            engine.add_request(rid, prompt, params)
            outputs[rid] = []
        for rid in aborts.get(it, []):
            if rid in outputs and engine.abort(rid):
                aborted.add(rid)
        for out in engine.step():
            outputs[out.request_id].extend(out.new_token_ids)
        it += 1
        assert it < 5_000, "engine did not finish"
    assert engine.blocks.num_free == engine.executor.runner.num_blocks, "KV blocks leaked"
    return {rid: ids for rid, ids in outputs.items() if rid not in aborted}


@pytest.mark.parametrize("seed", range(10))
def test_random_workloads_keep_greedy_tokens_and_blocks(moe_checkpoint_5, seed):
    arrivals, aborts = workload(seed)
    reference = run(make_engine(moe_checkpoint_5, schedule_mode="chunked"), arrivals, {})
    rng = random.Random(100 + seed)
    for mode in ("layered", "chunked"):
        # 30 blocks of 4 tokens: a few requests at a time, so admission waits and decodes get preempted.
        engine = make_engine(moe_checkpoint_5, schedule_mode=mode, num_kv_blocks=30, max_model_len=120, max_num_seqs=12,
                             max_num_batched_tokens=rng.choice([16, 40, 96]), num_stages=rng.randint(1, 5),
                             group_token_thresholds=tuple(sorted(rng.sample(range(4, 64), 2))),
                             max_kv_wait_ms=rng.choice([None, 1e-3]))  # 1e-3: overdue prompts preempt decodes
        got = run(engine, arrivals, aborts)
        assert got == {rid: reference[rid] for rid in got}, (mode, engine.args)
        assert engine.stats.num_preemptions > 0, "the KV budget should force preemption"

"""The demo Qwen3-MoE through every Triton kernel (fused qk-norm + RoPE + KV store, fused residual-add + norm,
router, fused MoE, paged attention) == the torch ops, greedy; and the same with the fused kernels switched
back to their separate steps (ModelRunner.set_fused_ops, what perf/bench_offline.py's :unfused modes run)."""
from __future__ import annotations

import random

import pytest
from engine_utils import greedy, make_engine, run_to_completion
from helpers import DEVICE


def _tokens(model_dir, ops: str, monkeypatch: pytest.MonkeyPatch, fused: bool = True) -> dict[str, list[int]]:
    """Prompts of 10-40 tokens in 32-token budgets over 2 layer groups, then decodes: prefill chunks and decode rows."""
    monkeypatch.setenv("LAMINAR_OPS", ops)
    rng = random.Random(3)
    prompts = [(f"r{i}", [rng.randrange(1, 500) for _ in range(rng.randint(10, 40))], greedy(4)) for i in range(3)]
    engine = make_engine(model_dir, device=DEVICE, max_num_batched_tokens=32, max_num_seqs=8, num_stages=2,
                         group_token_thresholds=(), block_size=16, num_kv_blocks=64, max_model_len=512)
    if not fused:
        engine.executor.runner.set_fused_ops(False)
    return run_to_completion(engine, {0: prompts})


def test_kernels_match_torch_ops(demo_model, monkeypatch):
    reference = _tokens(demo_model, "torch", monkeypatch)
    assert _tokens(demo_model, "triton", monkeypatch) == reference
    assert _tokens(demo_model, "triton", monkeypatch, fused=False) == reference

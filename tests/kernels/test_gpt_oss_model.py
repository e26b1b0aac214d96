"""Tiny GPT-OSS through every Triton kernel (attention with sinks and windows, MXFP4 fused MoE) == the torch ops."""
from __future__ import annotations

import random

import pytest
from engine_utils import greedy, make_engine, run_to_completion
from helpers import DEVICE


def _tokens(model_dir, ops: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Prompts of 10-40 tokens in 32-token budgets over 2 layer groups: chunks, groups and 8-token windows."""
    monkeypatch.setenv("LAMINAR_OPS", ops)
    rng = random.Random(7)
    prompts = [(f"r{i}", [rng.randrange(1, 257) for _ in range(rng.randint(10, 40))], greedy(4)) for i in range(3)]
    engine = make_engine(model_dir, device=DEVICE, max_num_batched_tokens=32, max_num_seqs=8, num_stages=2,
                         group_token_thresholds=(), block_size=16, num_kv_blocks=64)
    return run_to_completion(engine, {0: prompts})


def test_kernels_match_torch_ops(gpt_oss_mxfp4, monkeypatch):
    assert _tokens(gpt_oss_mxfp4, "triton", monkeypatch) == _tokens(gpt_oss_mxfp4, "torch", monkeypatch)

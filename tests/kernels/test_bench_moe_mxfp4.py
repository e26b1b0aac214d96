"""perf/bench_moe_mxfp4.py's CPU dry run: every path it times computes GPT-OSS's MoE on the same experts."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import DEVICE

ROOT = Path(__file__).resolve().parents[2]


def test_every_timed_path_agrees_on_a_tiny_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's pick, the in-register GEMM, the 16-bit write-out and bf16 experts give one result
    (within bf16 rounding), so the columns the GPU run compares are the same computation."""
    monkeypatch.syspath_prepend(str(ROOT / "perf"))
    import bench_moe_mxfp4 as bench

    rows = bench.bench(bench.TINY, [1, 13], None, None, torch.device(DEVICE), skip_old=True)
    assert [r["tokens"] for r in rows] == [1, 13]
    for r in rows:
        assert r["rel_diff_mxfp4_vs_bf16"] < 2e-2 and r["rel_diff_dequant_vs_bf16"] < 2e-2, r

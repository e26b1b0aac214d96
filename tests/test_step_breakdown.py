"""perf/step_breakdown.py: kernel names to categories, and the per-step sums and idle time."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sb(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "perf"))
    import step_breakdown

    return step_breakdown


def test_categories(sb) -> None:
    """Our kernels' names as the profiler reports them, and the libraries' (cuBLAS, FlashInfer, flash-attn)."""
    assert [sb.category(n) for n in ("moe_gemm_kernel", "moe_gemm_tma_kernel", "moe_mxfp4_kernel", "_count_kernel",
                                     "_prefix_kernel", "_scatter_kernel", "_topk_sum_kernel")] == ["moe"] * 7
    assert [sb.category(n) for n in ("_decode_split_kernel", "_decode_reduce_kernel", "_prefill_kernel",
                                     "BatchDecodeWithPagedKVCacheKernel", "flash_fwd_splitkv_kernel")] == ["attention"] * 5
    assert [sb.category(n) for n in ("nvjet_tst_128x64_64x8_2x1_v_bz_TNT", "sm90_xmma_gemm_bf16bf16_bf16f32",
                                     "_fp8_linear_kernel")] == ["gemm"] * 3
    assert [sb.category(n) for n in ("_rms_norm_kernel", "_rope_store_kv_kernel", "_route_topk_kernel",
                                     "Memcpy HtoD (Pageable -> Device)")] == ["other"] * 4


def test_summarize(sb) -> None:
    """Two steps of 10 ms: overlapping kernels count once in busy time; the rest of the step is idle."""
    kernels = [("moe_gemm_kernel", 0.0, 3000.0), ("_decode_split_kernel", 2000.0, 4000.0),
               ("nvjet_gemm", 10_000.0, 12_000.0), ("_rms_norm_kernel", 12_000.0, 13_000.0)]
    b = sb.summarize(kernels, steps=2, step_ms=10.0)
    assert (b["moe_ms"], b["attention_ms"], b["gemm_ms"], b["other_ms"]) == (1.5, 1.0, 1.0, 0.5)
    assert b["busy_ms"] == 3.5 and b["idle_ms"] == 6.5 and b["kernels_per_step"] == 2

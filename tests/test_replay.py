"""perf/replay.py: the in-process serving replay on the demo model (CPU smoke of its report), and its
bootstrap helper on synthetic data whose ratio is known."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 6


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, list, str]:
    out = tmp_path_factory.mktemp("replay")
    proc = subprocess.run([sys.executable, str(ROOT / "perf" / "replay.py"), "--preset", "cpu", "--requests",
                           str(REQUESTS), "--resamples", "300", "--engines", "layered-slo-tail-sf", "chunked-64",
                           "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return (json.loads((out / "replay.json").read_text()), json.loads((out / "requests.json").read_text()),
            (out / "replay.md").read_text())


@pytest.fixture
def replay(monkeypatch):
    """perf/replay.py as a module (perf/ scripts import their siblings as top-level modules)."""
    monkeypatch.syspath_prepend(str(ROOT / "perf"))
    import replay
    return replay


def test_report_structure(report) -> None:
    rep, _, table = report
    assert rep["command"].startswith("python ") and rep["commit"] and rep["machine"].startswith("cpu")
    engines = [e["label"] for e in rep["config"]["engines"]]
    rates = rep["config"]["request_rates"]["sharegpt"]
    assert [(c["engine"], c["request_rate"]) for c in rep["cells"]] == [(e, r) for e in engines for r in rates]
    for cell in rep["cells"]:
        assert cell["succeeded"] == cell["requests"] == REQUESTS
        assert 0 < cell["ttft_ms"]["p50"] <= cell["ttft_ms"]["p99"] and cell["tbt_ms"]["p99"] > 0
        assert 0 <= cell["slo_attainment"] <= 1 and cell["goodput"] <= cell["request_throughput"]
        assert cell["expert_gb_per_request"] > 0 and cell["energy_j_per_token"] is None  # no energy counter on CPU
        assert (cell["tail_scale"] is None) == (cell["engine"] == "chunked-64")  # the closed loop's planning target
    assert len(rep["ratios"]) == (len(engines) - 1) * len(rates)
    assert f"| {engines[0]} / {engines[1]} | sharegpt |" in table and "| engine | workload |" in table


def test_every_request_recorded(report) -> None:
    _, cells, _ = report
    for cell in cells:
        assert len(cell["requests"]) == REQUESTS
        for rec in cell["requests"]:
            assert rec["ok"] and rec["output_tokens"] == rec["max_tokens"] >= 1 and rec["prompt_tokens"] >= 1
            assert len(rec["tbt_ms"]) == rec["output_tokens"] - 1 and all(g >= 0 for g in rec["tbt_ms"])
            assert 0 < rec["ttft_ms"] <= rec["e2e_ms"]


def test_ratio_cis_contain_their_point(report) -> None:
    rep, _, _ = report
    for row in rep["ratios"]:
        r = row["mean_ttft"]
        assert r["lo"] <= r["ratio"] <= r["hi"], r
        r = row["goodput"]  # None only where the other engine met no SLO at all
        assert r["ratio"] is None or r["lo"] <= r["ratio"] <= r["hi"], r
        cells = {c["engine"]: c for c in rep["cells"] if c["request_rate"] == row["request_rate"]}
        expected = cells[row["numerator"]]["ttft_ms"]["mean"] / cells[row["engine"]]["ttft_ms"]["mean"]
        assert row["mean_ttft"]["ratio"] == pytest.approx(expected)


def test_recompare_gives_the_run_s_ratios_and_their_inverse(report, replay, tmp_path) -> None:
    """--recompare on a run's files: with the run's numerator the same ratios (same draws; the files
    keep times to the microsecond), with the other engine as numerator each point ratio inverted."""
    rep, cells, _ = report
    (tmp_path / "replay.json").write_text(json.dumps(rep))
    (tmp_path / "requests.json").write_text(json.dumps(cells))
    again = replay.recompare(tmp_path, None)["ratios"]
    assert len(again) == len(rep["ratios"]) > 0
    for mine, theirs in zip(rep["ratios"], again):
        for metric in ("mean_ttft", "p99_ttft", "p99_tbt"):
            assert theirs[metric] == pytest.approx(mine[metric], rel=1e-3), metric
    inverse = replay.recompare(tmp_path, "chunked-64")["ratios"]
    assert [(r["engine"], r["request_rate"]) for r in inverse] == [(r["numerator"], r["request_rate"]) for r in rep["ratios"]]
    for mine, theirs in zip(rep["ratios"], inverse):
        assert mine["mean_ttft"]["ratio"] * theirs["mean_ttft"]["ratio"] == pytest.approx(1.0, rel=1e-3)


def test_weighted_percentile_is_analyze_percentile(replay) -> None:
    """Draw counts as weights give the nearest-rank percentile of the resampled multiset."""
    rng = np.random.default_rng(1)
    for n in (1, 7, 100):
        values = np.sort(rng.exponential(size=n))
        weights = rng.integers(0, 4, size=n)
        weights[0] += weights.sum() == 0
        expanded = np.repeat(values, weights).tolist()
        for q in (0.01, 0.5, 0.9, 0.99, 1.0):
            assert replay.weighted_percentile(values, weights, q) == replay.percentile(expanded, q)


def test_bootstrap_ci_covers_a_known_ratio(replay) -> None:
    """Means of 1.5 x lognormal over lognormal (true ratio 1.5): the 95% CI covers it in about 95%
    of independent data sets, is not degenerate, and excludes 1 (the difference is resolved)."""
    covered, n = 0, 200
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        a, b = 1.5 * rng.lognormal(0, 0.5, n), rng.lognormal(0, 0.5, n)
        r = replay.bootstrap_ratio(lambda c: c @ a / c.sum(), lambda c: c @ b / c.sum(), n, resamples=500, seed=seed)
        assert r["lo"] < r["ratio"] < r["hi"] and 1.0 < r["lo"] and r["hi"] - r["lo"] < 0.5
        covered += r["lo"] <= 1.5 <= r["hi"]
    assert covered >= 34  # 85%; binomial(40, 0.95) falls below it with probability < 1%


def test_bootstrap_is_paired(replay) -> None:
    """Both sides see the same draw: a = 2 b request by request gives exactly 2, however spread b is."""
    b = np.random.default_rng(0).lognormal(0, 1.0, 50)
    r = replay.bootstrap_ratio(lambda c: c @ (2 * b), lambda c: c @ b, 50, resamples=200)
    assert r["ratio"] == pytest.approx(2) and r["lo"] == pytest.approx(2) and r["hi"] == pytest.approx(2)
    empty = replay.bootstrap_ratio(lambda c: 1.0, lambda c: 0.0, 5, resamples=10)
    assert empty == {"ratio": None, "lo": None, "hi": None} and not math.isnan(r["ratio"])


def test_mixed_ttft_budgets(replay) -> None:
    """--ttft-budgets: seeded shares (the same for every engine), each record's own TTFT SLO."""
    from analyze import meets

    shares = replay.parse_budgets(["0.25:500", "0.75:4000"])
    assert shares == [(0.25, 500.0), (0.75, 4000.0)]
    budgets = replay.ttft_budgets(2000, shares, "0:sharegpt:budgets")
    assert budgets == replay.ttft_budgets(2000, shares, "0:sharegpt:budgets")
    assert set(budgets) == {500.0, 4000.0} and 0.2 < budgets.count(500.0) / 2000 < 0.3
    assert replay.ttft_budgets(3, [], "x") == [None] * 3
    for bad in (["0.5:500"], ["0.5:500", "0.5:-1"], ["half:500"]):
        with pytest.raises(SystemExit):
            replay.parse_budgets(bad)
    rec = {"ttft_ms": 900.0, "tbt_ms": []}
    slo = {"ttft_ms": 1000.0, "tbt_ms": 100.0}
    assert meets(rec, slo) == (True, True)
    assert meets({**rec, "ttft_slo_ms": 500.0}, slo) == (False, True)
    assert meets({**rec, "ttft_slo_ms": 4000.0}, {**slo, "ttft_ms": 800.0}) == (True, True)

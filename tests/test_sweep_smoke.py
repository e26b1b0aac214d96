"""CPU smoke of the whole serving sweep (perf/sweep.py) on the demo model: two schedule modes, one
request rate, a token-exact ShareGPT workload and a text workload, then analysis and plots."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "perf" / "sweep_configs" / "cpu_smoke.json"
PREFIX_CONFIG = ROOT / "perf" / "sweep_configs" / "cpu_prefix_smoke.json"


def _tool(name: str) -> bool:
    return (ROOT / ".venv" / "bin" / name).exists() or shutil.which(name) is not None


pytestmark = pytest.mark.skipif(not (_tool("tritonserver") and _tool("perf_analyzer")),
                                reason="tritonserver/perf_analyzer not set up (./build.sh)")


def run_sweep(config: Path, out: Path) -> Path:
    proc = subprocess.run([sys.executable, str(ROOT / "perf" / "sweep.py"), "--config", str(config),
                           "--out-dir", str(out)], capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    return run_sweep(CONFIG, tmp_path_factory.mktemp("sweep"))


def test_every_run_present(sweep_dir: Path) -> None:
    config = json.loads(CONFIG.read_text())
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    want = {(e["label"], w["name"], r) for e in config["engines"] for w in config["workloads"]
            for r in config["request_rates"][w["name"]]}
    assert {(r["engine"], r["workload"], r["request_rate"]) for r in analysis["runs"]} == want
    table = (sweep_dir / "analysis.md").read_text()
    assert "| engine |" in table
    ratio_rows = [line for line in table.splitlines() if line.startswith("| layered-256 / chunked-64 |")]
    assert len(ratio_rows) == len([w for w in config["workloads"] for _ in config["request_rates"][w["name"]]])
    for line in ratio_rows:  # mean TTFT and P99 TBT ratios are numbers (energy is absent on CPU)
        assert float(line.split("|")[4]) > 0 and float(line.split("|")[5]) > 0


def test_requests_succeed_with_sane_latencies(sweep_dir: Path) -> None:
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    keys = ("engine", "workload", "request_rate")
    per_run = {tuple(r[k] for k in keys): r["requests"] for r in json.loads((sweep_dir / "requests.json").read_text())}
    assert len(per_run) == len(manifest["runs"])
    for run in manifest["runs"]:
        records = per_run[tuple(run[k] for k in keys)]
        assert len(records) >= run["requests"], run["export"]
        for rec in records:
            assert rec["ok"], rec["finish_reason"]
            assert rec["output_tokens"] == rec["max_tokens"] >= 1
            assert len(rec["tbt_ms"]) == rec["output_tokens"] - 1
            assert 0 < rec["ttft_ms"] <= rec["e2e_ms"]
            assert all(g >= 0 for g in rec["tbt_ms"])
        # The server counted at least the requests and tokens the client recorded (perf_analyzer
        # may send a request past its window that it does not export).
        delta = run["metrics_delta"]
        assert delta["lp:request_success_total"] >= len(records)
        assert delta["lp:generation_tokens_total"] >= sum(r["output_tokens"] for r in records)


def test_summary_values(sweep_dir: Path) -> None:
    for row in json.loads((sweep_dir / "analysis.json").read_text())["runs"]:
        assert row["rc"] == 0 and row["succeeded"] == row["requests"] > 0
        assert 0 < row["ttft_ms"]["p50"] <= row["ttft_ms"]["p99"] <= row["ttft_ms"]["max"]
        assert row["tbt_ms"]["p50"] <= row["tbt_ms"]["p99"]
        assert row["tpot_ms"]["mean"] > 0 and row["e2e_ms"]["p50"] > 0
        assert 0 <= row["slo_attainment"] <= 1 and row["goodput"] <= row["request_throughput"]
        assert row["output_token_throughput"] > 0
        assert row["expert_gb_per_request"] > 0
        assert row["energy_j_per_token"] is None  # no energy counter on CPU


def test_plots_written(sweep_dir: Path) -> None:
    for name in ("pareto_ttft_tbt.png", "slo_attainment.png", "timeline.png"):
        png = sweep_dir / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name


def test_prefix_cache_sweep(tmp_path):
    """The shared-prefix workloads through the sweep: every request succeeds, the engine with the
    cache reports its hit rate (the off engine none), and the on / off table pairs them."""
    out = run_sweep(PREFIX_CONFIG, tmp_path)
    runs = json.loads((out / "analysis.json").read_text())["runs"]
    assert len(runs) == 4 and all(r["rc"] == 0 and r["succeeded"] == r["requests"] > 0 for r in runs)
    hit_rates = {(r["engine"], r["workload"]): r["cache_hit_rate"] for r in runs}
    for workload in ("system-prompt", "multi-turn"):
        assert hit_rates[("layered", workload)] is None
        assert 0.3 < hit_rates[("layered-cache", workload)] < 1
    table = (out / "analysis.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| layered-cache / layered |")]) == 2

"""Per-request latencies from a perf_analyzer `--profile-export-file` of a streaming run.

The export holds, per request, its send timestamp and one timestamp per response (ns); with one
response per engine step, response gaps are the inter-token latencies the client saw.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarize(export: dict) -> list[dict]:
    """One summary per experiment (concurrency or request-rate value), latencies in ms."""
    out = []
    for exp in export["experiments"]:
        ttft, itl, e2e, responses = [], [], [], 0
        for req in exp["requests"]:
            stamps = req["response_timestamps"]
            if not stamps:
                continue
            responses += len(stamps)
            ttft.append((stamps[0] - req["timestamp"]) / 1e6)
            e2e.append((stamps[-1] - req["timestamp"]) / 1e6)
            itl.extend((b - a) / 1e6 for a, b in zip(stamps, stamps[1:]))
        bounds = exp.get("window_boundaries") or []
        seconds = (bounds[-1] - bounds[0]) / 1e9 if len(bounds) > 1 else float("nan")
        out.append({
            "experiment": exp["experiment"], "requests": len(ttft), "responses": responses,
            "ttft_ms_p50": _pct(ttft, 0.5), "ttft_ms_p99": _pct(ttft, 0.99),
            "itl_ms_p50": _pct(itl, 0.5), "itl_ms_p99": _pct(itl, 0.99),
            "e2e_ms_mean": statistics.fmean(e2e) if e2e else float("nan"),
            "responses_per_s": responses / seconds if seconds > 0 else float("nan"),
        })
    return out


if __name__ == "__main__":
    print(json.dumps(summarize(json.loads(Path(sys.argv[1]).read_text())), indent=2))

"""Latency, SLO, goodput, energy and expert-traffic summary of a sweep directory (sweep.py), and
of a plain perf_analyzer export (run_perf_analyzer.py): the one analysis of perf_analyzer data.

Definitions (times from perf_analyzer's profile export: the send time of each request and the
receive time of each streamed response; genai-perf's definitions where it has one):
  TTFT        first response - request sent.
  E2E         last response - request sent (genai-perf "request latency").
  TBT         every inter-token gap: the gap between consecutive responses; a response carrying k
              tokens adds k-1 gaps of 0 (those tokens reached the client together), so a request
              with n output tokens has n-1 gaps. Percentiles are over all gaps of all requests.
  TPOT        per request (E2E - TTFT) / (n - 1), requests with n >= 2 (genai-perf
              "inter token latency").
  Percentiles nearest rank, everywhere in perf/ (`percentile`): the q-th percentile of n values is
              the ceil(q n)-th smallest, an observed value with at least q of the values at or
              below it (so "p99 TBT <= SLO" means 99% of gaps met it); p50, p90, p99, plus mean
              and max. (Analyses committed before this definition was shared used numpy's
              linear interpolation for these statistics.)
  duration    last response of any request - first request sent (genai-perf benchmark duration).
  throughput  requests / duration and output tokens / duration.
  SLO         a request meets the TTFT SLO when TTFT <= ttft_ms (or its own ttft_slo_ms, where the
              record carries one: replay.py --ttft-budgets), the TBT SLO when the p99 of its
              own gaps (the max gap below 100 tokens) <= tbt_ms; attainment is the
              share of requests meeting both. Defaults 2000 ms and 100 ms (GPU, Qwen3-30B-A3B
              class); a sweep config's "slo" or --ttft-slo-ms/--tbt-slo-ms override them.
  goodput     requests meeting both SLOs / duration.
  energy/token  change of the energy counter (lp:gpu_energy_joules_total, else Triton's GPU
              nv_energy_consumption) over the run / change of lp prompt + generation tokens;
              also per output token. Absent (null) on CPU.
  expert GB/request  change of lp:expert_weight_bytes_total / change of lp:request_success_total.
  cache hit rate  change of lp:prefix_cache_hits_total / change of lp:prefix_cache_queries_total:
              the share of prompt tokens whose KV the prefix cache held (absent with caching off).
A request succeeded when its last response carries a finish reason and it made max_tokens tokens.

The comparison table puts each layered engine beside each chunked one, workload by workload
and rate by rate, as ratios layered / chunked (below 1: layered lower); a second one puts each
engine with prefix caching beside the engine whose parameters differ only in caching off.

    python perf/analyze.py /tmp/sweep [--ttft-slo-ms 2000 --tbt-slo-ms 100]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DEFAULT_SLO = {"ttft_ms": 2000.0, "tbt_ms": 100.0}
STATS = ("mean", "p50", "p90", "p99", "max")


def tokens_in(response: dict) -> int:
    ids = response.get("output_ids", "")
    return len(ids) if isinstance(ids, list) else (0 if ids == "" else 1)


def request_record(req: dict) -> dict:
    """One request's latencies (ms) from its profile-export entry."""
    sent, stamps = req["timestamp"], req["response_timestamps"]
    outputs = req.get("response_outputs") or [{"output_ids": 0}] * len(stamps)
    counts = [tokens_in(o) for o in outputs]
    gaps: list[float] = []
    for i, (t, k) in enumerate(zip(stamps, counts)):
        if i and k:
            gaps.append((t - stamps[i - 1]) / 1e6)
        gaps.extend([0.0] * max(0, k - 1))
    inputs = req.get("request_inputs", {})
    n = sum(counts)
    ttft = (stamps[0] - sent) / 1e6 if stamps else math.nan
    e2e = (stamps[-1] - sent) / 1e6 if stamps else math.nan
    finish = outputs[-1].get("finish_reason", "") if outputs else ""
    return {
        "sent_ns": sent, "prompt_tokens": len(inputs.get("input_ids") or []) or None,
        "max_tokens": inputs.get("max_tokens"), "output_tokens": n, "ttft_ms": ttft, "e2e_ms": e2e,
        "tpot_ms": (e2e - ttft) / (n - 1) if n >= 2 else None, "tbt_ms": gaps,
        "finish_reason": finish, "last_ns": stamps[-1] if stamps else sent,
        "ok": bool(stamps) and bool(finish) and inputs.get("max_tokens") in (None, n),
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the ceil(q n)-th smallest of n values (q in (0, 1]); nan for no values."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(q * len(ordered))) - 1)] if ordered else math.nan


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {k: None for k in STATS}
    return {"mean": math.fsum(values) / len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99), "max": max(values)}


def meets(rec: dict, slo: dict) -> tuple[bool, bool]:
    """A request without gaps (one token) meets the TBT SLO; its own TTFT budget, if any, is its SLO."""
    ttft_ms = rec.get("ttft_slo_ms") or slo["ttft_ms"]
    return rec["ttft_ms"] <= ttft_ms, not rec["tbt_ms"] or percentile(rec["tbt_ms"], 0.99) <= slo["tbt_ms"]


def summarize_run(records: list[dict], metrics_delta: dict[str, float], slo: dict) -> dict:
    """The per-run numbers of the analysis table."""
    start = min((r["sent_ns"] for r in records), default=0)
    end = max((r["last_ns"] for r in records), default=0)
    duration = (end - start) / 1e9
    hits = [meets(r, slo) for r in records if r["ok"]]
    good = sum(a and b for a, b in hits)
    out_tokens = sum(r["output_tokens"] for r in records)
    energy = metrics_delta.get("lp:gpu_energy_joules_total") or metrics_delta.get("nv_energy_consumption")
    served = metrics_delta.get("lp:prompt_tokens_total", 0) + metrics_delta.get("lp:generation_tokens_total", 0)
    finished = metrics_delta.get("lp:request_success_total", 0)
    n = len(records)
    return {
        "requests": n, "succeeded": sum(r["ok"] for r in records), "output_tokens": out_tokens,
        "duration_s": duration,
        "request_throughput": n / duration if duration > 0 else None,
        "output_token_throughput": out_tokens / duration if duration > 0 else None,
        "ttft_ms": stats([r["ttft_ms"] for r in records]),
        "tbt_ms": stats([g for r in records for g in r["tbt_ms"]]),
        "tpot_ms": stats([r["tpot_ms"] for r in records if r["tpot_ms"] is not None]),
        "e2e_ms": stats([r["e2e_ms"] for r in records]),
        "slo_ttft_attainment": sum(a for a, _ in hits) / n if n else None,
        "slo_tbt_attainment": sum(b for _, b in hits) / n if n else None,
        "slo_attainment": good / n if n else None,
        "goodput": good / duration if duration > 0 else None,
        "energy_j_per_token": energy / served if energy and served else None,
        "energy_j_per_output_token": energy / metrics_delta["lp:generation_tokens_total"]
        if energy and metrics_delta.get("lp:generation_tokens_total") else None,
        "expert_gb_per_request": metrics_delta.get("lp:expert_weight_bytes_total", 0) / 1e9 / finished
        if finished else None,
        "preemptions": metrics_delta.get("lp:num_preemptions_total"),
        "cache_hit_rate": metrics_delta["lp:prefix_cache_hits_total"] / metrics_delta["lp:prefix_cache_queries_total"]
        if metrics_delta.get("lp:prefix_cache_queries_total") else None,
    }


def load_records(sweep_dir: Path, run: dict) -> list[dict]:
    export = json.loads((sweep_dir / run["export"]).read_text())
    return [request_record(req) for exp in export["experiments"] for req in exp["requests"]]


def summarize_experiments(export: dict) -> list[dict]:
    """A plain perf_analyzer export (run_perf_analyzer.py): one summary per experiment (a
    concurrency or request-rate value), over the requests that got a response."""
    out = []
    for exp in export["experiments"]:
        records = [request_record(r) for r in exp["requests"] if r["response_timestamps"]]
        responses = sum(len(r["response_timestamps"]) for r in exp["requests"])
        bounds = exp.get("window_boundaries") or []
        seconds = (bounds[-1] - bounds[0]) / 1e9 if len(bounds) > 1 else math.nan
        out.append({
            "experiment": exp["experiment"], "requests": len(records), "responses": responses,
            "ttft_ms": stats([r["ttft_ms"] for r in records]), "tbt_ms": stats([g for r in records for g in r["tbt_ms"]]),
            "e2e_ms": stats([r["e2e_ms"] for r in records]),
            "responses_per_s": responses / seconds if seconds > 0 else math.nan,
        })
    return out


def analyze_sweep(sweep_dir: Path, slo: dict | None = None) -> dict:
    """Per-run summaries ("runs") and, per run, every request's latencies ("requests")."""
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    slo = {**DEFAULT_SLO, **manifest["config"].get("slo", {}), **(slo or {})}
    rows, per_request = [], []
    for run in manifest["runs"]:
        keys = {k: run[k] for k in ("engine", "schedule_mode", "workload", "request_rate", "rc")}
        if not (sweep_dir / run["export"]).is_file():
            rows.append({**keys, "error": "no profile export"})
            continue
        records = load_records(sweep_dir, run)
        rows.append({**keys, **summarize_run(records, run["metrics_delta"], slo)})
        per_request.append({**keys, "requests": [{k: v for k, v in r.items() if not k.endswith("_ns")}
                                                 for r in records]})
    return {"slo": slo, "runs": rows, "skipped": manifest.get("skipped", []),
            "failures": manifest.get("failures", []), "requests": per_request,
            "cache_pairs": cache_pairs(manifest["config"])}


def cache_pairs(config: dict) -> list[tuple[str, str]]:
    """(engine with prefix caching, the engine with every other parameter the same and caching off)."""
    def params(engine: dict) -> dict[str, str]:
        merged = {k: str(v).lower() for k, v in {**config["parameters"], **engine["parameters"]}.items()}
        return {"enable_prefix_caching": "true", **merged}  # the engine's default is on

    engines = {e["label"]: params(e) for e in config["engines"]}
    rest = {label: {k: v for k, v in p.items() if k != "enable_prefix_caching"} for label, p in engines.items()}
    return [(on, off) for on in engines for off in engines
            if engines[on]["enable_prefix_caching"] == "true" and engines[off]["enable_prefix_caching"] == "false"
            and rest[on] == rest[off]]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(analysis: dict) -> str:
    slo = analysis["slo"]
    head = ("| engine | workload | rate | ok/n | TTFT mean/p50/p99 ms | TBT p50/p99/max ms | TPOT mean ms | E2E p50 ms "
            f"| SLO att. (TTFT<={slo['ttft_ms']:g}, TBT<={slo['tbt_ms']:g}) | goodput req/s | out tok/s "
            "| J/token | expert GB/req | cache hit % |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in analysis["runs"]:
        if "error" in r:
            lines.append(f"| {r['engine']} | {r['workload']} | {r['request_rate']:g} | {r['error']} |")
            continue
        lines.append(
            f"| {r['engine']} | {r['workload']} | {r['request_rate']:g} | {r['succeeded']}/{r['requests']} "
            f"| {fmt(r['ttft_ms']['mean'], 0)} / {fmt(r['ttft_ms']['p50'], 0)} / {fmt(r['ttft_ms']['p99'], 0)} "
            f"| {fmt(r['tbt_ms']['p50'])} / {fmt(r['tbt_ms']['p99'])} / {fmt(r['tbt_ms']['max'], 0)} "
            f"| {fmt(r['tpot_ms']['mean'])} | {fmt(r['e2e_ms']['p50'], 0)} "
            f"| {fmt(r['slo_attainment'], 2)} | {fmt(r['goodput'], 2)} | {fmt(r['output_token_throughput'])} "
            f"| {fmt(r['energy_j_per_token'], 4)} | {fmt(r['expert_gb_per_request'], 2)} "
            f"| {fmt(r['cache_hit_rate'] and 100 * r['cache_hit_rate'])} |")
    lines += comparison(analysis) + cache_comparison(analysis)
    notes = [f"\nSkipped (deadline): {', '.join(analysis['skipped'])}"] if analysis.get("skipped") else []
    notes += [f"\nEngine failed: {f.splitlines()[0]}" for f in analysis.get("failures", [])]
    return "\n".join(lines + notes) + "\n"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def comparison(analysis: dict) -> list[str]:
    """Layered / chunked ratios of the headline numbers, for every pair run on the same workload and rate."""
    runs = [r for r in analysis["runs"] if "error" not in r]
    cells = {(r["engine"], r["workload"], r["request_rate"]): r for r in runs}
    layered = list(dict.fromkeys(r["engine"] for r in runs if r["schedule_mode"] == "layered"))
    chunked = list(dict.fromkeys(r["engine"] for r in runs if r["schedule_mode"] == "chunked"))
    lines = []
    for lay, chk in ((lay, chk) for lay in layered for chk in chunked):
        for r in (r for r in runs if r["engine"] == lay):
            base = cells.get((chk, r["workload"], r["request_rate"]))
            if base is None:
                continue
            lines.append(
                f"| {lay} / {chk} | {r['workload']} | {r['request_rate']:g} "
                f"| {ratio(r['ttft_ms']['mean'], base['ttft_ms']['mean'])} "
                f"| {ratio(r['tbt_ms']['p99'], base['tbt_ms']['p99'])} "
                f"| {ratio(r['energy_j_per_token'], base['energy_j_per_token'])} "
                f"| {ratio(r['expert_gb_per_request'], base['expert_gb_per_request'])} "
                f"| {fmt(r['slo_attainment'], 2)} vs {fmt(base['slo_attainment'], 2)} |")
    if not lines:
        return []
    return ["", "Layered / chunked, same workload and rate:", "",
            "| pair | workload | rate | mean TTFT | P99 TBT | J/token | expert GB/req | SLO attainment |",
            "|---|---|---|---|---|---|---|---|", *lines]


def cache_comparison(analysis: dict) -> list[str]:
    """Prefix caching on / off ratios for every pair of otherwise equal engines, per workload and rate."""
    cells = {(r["engine"], r["workload"], r["request_rate"]): r for r in analysis["runs"] if "error" not in r}
    lines = []
    for on, off in analysis.get("cache_pairs", []):
        for (engine, workload, rate), r in cells.items():
            base = cells.get((off, workload, rate))
            if engine != on or base is None:
                continue
            ratios = [ratio(r[metric][stat], base[metric][stat])
                      for metric, stat in (("ttft_ms", "mean"), ("ttft_ms", "p99"), ("tpot_ms", "mean"), ("tbt_ms", "p99"))]
            hits = fmt(r["cache_hit_rate"] and 100 * r["cache_hit_rate"])
            lines.append(f"| {on} / {off} | {workload} | {rate:g} | {' | '.join(ratios)} | {hits} |")
    if not lines:
        return []
    return ["", "Prefix caching on / off, engines otherwise equal, same workload and rate:", "",
            "| pair | workload | rate | mean TTFT | P99 TTFT | mean TPOT | P99 TBT | hit % (on) |",
            "|---|---|---|---|---|---|---|---|", *lines]


def write(sweep_dir: Path, analysis: dict) -> None:
    """analysis.json (summaries), requests.json (per request) and analysis.md (the table)."""
    summary = {k: v for k, v in analysis.items() if k != "requests"}
    (sweep_dir / "analysis.json").write_text(json.dumps(summary, indent=1))
    (sweep_dir / "requests.json").write_text(json.dumps(analysis["requests"]))
    (sweep_dir / "analysis.md").write_text(markdown(analysis))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--ttft-slo-ms", type=float)
    parser.add_argument("--tbt-slo-ms", type=float)
    args = parser.parse_args()
    override = {k: v for k, v in (("ttft_ms", args.ttft_slo_ms), ("tbt_ms", args.tbt_slo_ms)) if v is not None}
    analysis = analyze_sweep(args.sweep_dir, override)
    write(args.sweep_dir, analysis)
    print(markdown(analysis))


if __name__ == "__main__":
    main()

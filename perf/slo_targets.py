"""The issue-10 targets, layered-SLO against the other engines, from one or more sweep analyses.

Each --run names an analysis.json (perf/analyze.py's output, judged at the TBT SLO given here);
a cell (engine, workload, rate) comes from the last run listed that has it, and the table says
which run each comparison came from, so same-run and cross-run ratios are told apart.

    python perf/slo_targets.py --slo-ms 100 --layered layered-slo100 --chunked-slo chunked-slo100 \
        --run B=perf/results/sweep-slo-h200/part-b/analysis.json --run A=.../part-a/analysis.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

STATIC_CHUNKED = ("chunked-512", "chunked-2048")


def load(runs: list[str]) -> dict[tuple, tuple[str, dict]]:
    cells: dict[tuple, tuple[str, dict]] = {}
    for spec in runs:
        label, path = spec.split("=", 1)
        for r in json.loads(Path(path).read_text())["runs"]:
            if "error" not in r:
                cells[(r["engine"], r["workload"], r["request_rate"])] = (label, r)
    return cells


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def mark(value: float | None, limit: float, fmt: str = "{:.2f}") -> str:
    if value is None:
        return "-"
    return fmt.format(value) + (" ok" if value <= limit else " MISS")


def rows(cells: dict, slo_ms: float, layered: str, chunked_slo: str) -> list[str]:
    out = []
    keys = sorted({(w, rate) for (e, w, rate) in cells if e == layered})
    top = {w: max(rate for (ww, rate) in keys if ww == w) for w, _ in keys}
    for workload, rate in keys:
        src, me = cells[(layered, workload, rate)]
        get = lambda e: cells.get((e, workload, rate), (None, None))  # noqa: E731
        statics = {e: get(e) for e in STATIC_CHUNKED if get(e)[1]}
        meeting = {e: v for e, v in statics.items() if v[1]["tbt_ms"]["p99"] <= slo_ms}
        best = min(meeting.items(), key=lambda kv: kv[1][1]["ttft_ms"]["mean"]) if meeting else None
        c512, cslo = get("chunked-512"), get(chunked_slo)
        others = [v[1] for (e, w, r), v in cells.items() if w == workload and r == rate and e != layered]
        chunked = [v[1] for (e, w, r), v in cells.items() if w == workload and r == rate and e.startswith("chunked")]
        tbt_ok = me["tbt_ms"]["p99"] <= slo_ms or not meeting
        att = me["slo_attainment"] >= max((o["slo_attainment"] for o in others), default=0) - 1e-9
        goodput = ratio(me["goodput"], max((c["goodput"] for c in chunked), default=None)) if rate == top[workload] else None
        sources = "/".join(sorted({src} | {v[0] for v in statics.values()} | ({cslo[0]} if cslo[0] else set())))
        out.append(
            f"| {workload} | {rate:g} | {sources} | {me['tbt_ms']['p99']:.0f} {'ok' if tbt_ok else 'MISS'} "
            f"| {me['slo_attainment']:.2f} vs {max((o['slo_attainment'] for o in others), default=0):.2f} "
            f"{'ok' if att else 'MISS'} "
            f"| {mark(ratio(me['ttft_ms']['mean'], best[1][1]['ttft_ms']['mean']) if best else None, 0.9)}"
            f"{' (' + best[0] + ')' if best else ' (none meets)'} "
            f"| {mark(ratio(me['ttft_ms']['mean'], c512[1]['ttft_ms']['mean'] if c512[1] else None), 0.6)} "
            f"| {mark(ratio(me['ttft_ms']['mean'], cslo[1]['ttft_ms']['mean'] if cslo[1] else None), 1.0)} "
            f"| {mark(ratio(me['energy_j_per_token'], c512[1]['energy_j_per_token'] if c512[1] else None), 0.9)} "
            f"| {mark(ratio(me['expert_gb_per_request'], cslo[1]['expert_gb_per_request'] if cslo[1] else None), 0.9)} "
            f"| {'-' if goodput is None else ('%.2f' % goodput) + (' ok' if goodput >= 1.2 else ' MISS')} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="LABEL=path/to/analysis.json (later wins)")
    ap.add_argument("--slo-ms", type=float, required=True)
    ap.add_argument("--layered", required=True)
    ap.add_argument("--chunked-slo", required=True)
    args = ap.parse_args()
    cells = load(args.run)
    print(f"Targets at a {args.slo_ms:g} ms TBT SLO: {args.layered} against the others "
          f"(ratios {args.layered} / other; runs: {', '.join(args.run)})\n")
    print(f"| workload | rate | runs | p99 TBT ms within SLO | SLO attainment vs best other | mean TTFT / best static "
          f"chunked meeting SLO (<= 0.9) | / chunked-512 (<= 0.6) | / {args.chunked_slo} (<= 1.0) "
          f"| J/token / chunked-512 (<= 0.9) | expert GB/req / {args.chunked_slo} (<= 0.9) "
          f"| goodput / best chunked, top rate (>= 1.2) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows(cells, args.slo_ms, args.layered, args.chunked_slo)))


if __name__ == "__main__":
    main()

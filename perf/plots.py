"""PNG plots of a sweep directory (after analyze.py): TTFT vs p99 TBT with the Pareto front per
request rate, SLO attainment vs request rate, and the token timeline of one long request per engine.

    python perf/plots.py /tmp/sweep
"""
from __future__ import annotations

import argparse
import json
from itertools import accumulate
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from analyze import load_records  # noqa: E402


def engine_colors(runs: list[dict]) -> dict[str, str]:
    engines = list(dict.fromkeys(r["engine"] for r in runs))
    return {e: f"C{i}" for i, e in enumerate(engines)}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both axes (lower is better), sorted by x."""
    front, best_y = [], float("inf")
    for x, y in sorted(points):
        if y < best_y:
            front.append((x, y))
            best_y = y
    return front


def workloads_of(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["workload"] for r in runs))


def plot_pareto(runs: list[dict], path: Path) -> None:
    """Each engine's points joined in rate order; black rings mark the Pareto-optimal engines at a rate."""
    colors, names = engine_colors(runs), workloads_of(runs)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = [r for r in runs if r["workload"] == name and r["tbt_ms"]["p99"] is not None]
        point = {id(r): (r["tbt_ms"]["p99"], r["ttft_ms"]["p50"]) for r in rows}
        for engine, color in colors.items():
            mine = sorted((r for r in rows if r["engine"] == engine), key=lambda r: r["request_rate"])
            if mine:
                ax.plot(*zip(*(point[id(r)] for r in mine)), "o-", color=color, lw=1, ms=7, label=engine)
            for r in mine:
                ax.annotate(f"{r['request_rate']:g}/s", point[id(r)], textcoords="offset points",
                            xytext=(6, 4), fontsize=8)
        for rate in sorted({r["request_rate"] for r in rows}):
            front = pareto_front([point[id(r)] for r in rows if r["request_rate"] == rate])
            ax.scatter(*zip(*front), s=170, facecolors="none", edgecolors="black", lw=1.2,
                       label="Pareto-optimal at its rate" if rate == min(r["request_rate"] for r in rows) else None)
        ax.legend(fontsize=8, title="engine (labels: request rate)", title_fontsize=8)
        ax.set(xlabel="p99 TBT (ms)", ylabel="p50 TTFT (ms)", title=f"{name}: TTFT vs p99 TBT")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_slo(runs: list[dict], slo: dict, path: Path) -> None:
    colors, names = engine_colors(runs), workloads_of(runs)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for engine, color in colors.items():
            rows = sorted((r for r in runs if r["workload"] == name and r["engine"] == engine),
                          key=lambda r: r["request_rate"])
            if rows:
                ax.plot([r["request_rate"] for r in rows], [100 * r["slo_attainment"] for r in rows],
                        "o-", color=color, label=engine)
        ax.set_xticks(sorted({r["request_rate"] for r in runs if r["workload"] == name}))
        ax.set(xlabel="request rate (req/s, Poisson)", ylabel="requests meeting both SLOs (%)", ylim=(-3, 103),
               title=f"{name}: SLO attainment (TTFT<={slo['ttft_ms']:g} ms, p99 TBT<={slo['tbt_ms']:g} ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def longest_request(records: list[dict]) -> dict:
    return max(records, key=lambda r: (r["prompt_tokens"] or 0, r["output_tokens"]))


def plot_timeline(sweep_dir: Path, manifest_runs: list[dict], path: Path) -> None:
    """One request with the longest prompt, same workload and rate, in each engine."""
    runs = [r for r in manifest_runs if (sweep_dir / r["export"]).is_file()]
    if not runs:
        return
    loaded = {id(r): load_records(sweep_dir, r) for r in runs}
    workload = max(runs, key=lambda r: longest_request(loaded[id(r)])["prompt_tokens"] or 0)["workload"]
    rate = max(r["request_rate"] for r in runs if r["workload"] == workload)
    colors = engine_colors(manifest_runs)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in runs:
        if r["workload"] != workload or r["request_rate"] != rate:
            continue
        req = longest_request(loaded[id(r)])
        times = [t / 1e3 for t in accumulate(req["tbt_ms"], initial=req["ttft_ms"])]
        ax.step(times, range(1, len(times) + 1), where="post", color=colors[r["engine"]],
                label=f"{r['engine']} (prompt {req['prompt_tokens'] or '?'} tok, TTFT {req['ttft_ms']:.0f} ms)")
        ax.plot(times[:1], [1], "o", color=colors[r["engine"]])
    ax.set(xlabel="time since request sent (s)", ylabel="tokens received",
           title=f"Token timeline of the longest-prompt request ({workload}, {rate:g} req/s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(sweep_dir: Path) -> list[Path]:
    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    runs = [r for r in analysis["runs"] if "error" not in r and r["requests"]]
    paths = [sweep_dir / n for n in ("pareto_ttft_tbt.png", "slo_attainment.png", "timeline.png")]
    if runs:
        plot_pareto(runs, paths[0])
        plot_slo(runs, analysis["slo"], paths[1])
        plot_timeline(sweep_dir, manifest["runs"], paths[2])
    return [p for p in paths if p.exists()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    for p in plot_sweep(parser.parse_args().sweep_dir):
        print(p)


if __name__ == "__main__":
    main()

"""In-process serving replay: the engine (laminar.LLMEngine, no tritonserver) driven at wall-clock
by Poisson arrivals of the sweep workloads, so one GPU call measures hundreds of requests per cell,
and engines are compared with 95% bootstrap confidence intervals.

The config is a sweep config (perf/sweep_configs/*.json: parameters, engines, workloads,
request_rates, slo) or a preset. All engines share one executor (one set of weights, one KV pool;
each engine has its own scheduler and block manager), so an engine may override scheduling keys
only (SCHEDULER_KEYS). Every engine gets identical requests (workloads.py, as the sweep writes
them) at identical arrival times (exponential gaps from a seeded random.Random, first request at
0). Before a workload's rates, each engine serves the workload's first request alone (the sweep's
warm-up).

The loop, one thread as the Triton engine loop: add the requests whose arrival time has come (each
with that time as its arrival), run one engine step, stamp its outputs with the time the step
returned (the earliest a client could see them; gRPC and streaming are not in the replay: the
perf_analyzer sweep stays the end-to-end confirmation), idle until the next arrival when nothing
runs. The stamps become a perf_analyzer-style export entry per request, so analyze.py's
definitions apply unchanged (TTFT from the scheduled arrival, every inter-token gap, E2E, SLO
attainment per request, goodput, energy and expert bytes from the engine's counters).

Ratios: every other engine against one (--numerator, default the first engine), cell by cell, as
numerator / other for mean and P99 TTFT, P99 TBT, goodput and SLO attainment, each with a 95%
paired bootstrap CI: requests are resampled with replacement, the same draw for both engines (they
served the same requests), which removes the request-to-request variance the two share. The CI
covers that sampling variance within one run (goodput's duration is the cell's, held fixed), not
run-to-run drift (host jitter, clocks): a different --seed measures that.

    python perf/replay.py --preset cpu --out-dir /tmp/replay                       # demo model, < 1 min
    python perf/replay.py --preset gpu --workloads sharegpt --out-dir $OUT/replay  # Qwen3-30B-A3B shapes
    python perf/replay.py --config perf/sweep_configs/gpu_slo_part_b.json --requests 300 --out-dir ...
    python perf/replay.py --preset gpu --param model=perf/models/qwen3-8b --engines layered-slo100-tail chunked-2048 ...
    python perf/replay.py --recompare RUN_DIR --numerator layered-slo100   # an earlier run's ratios, again

Outputs under --out-dir: replay.json (command, commit, machine, config, per-cell summaries,
ratios), replay.md (the tables) and requests.json (every request's latencies).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from analyze import DEFAULT_SLO, fmt, meets, percentile, request_record, summarize_run
from workloads import WorkloadSpec, input_data, max_model_len

from laminar import EngineArgs, LLMEngine, SamplingParams
from laminar.config import ModelConfig
from laminar.cost_model import CostModel
from laminar.executor import Executor
from laminar.outputs import EngineStats
from laminar.policies import SloPolicy
from laminar.serving.engine_config import engine_field_types, resolve_engine_config
from laminar.serving.metrics import STAT_COUNTERS  # the server's counter names, so analyze reads ours

ROOT = Path(__file__).resolve().parents[1]
# Keys an engine entry may override: the shared executor was built without them.
SCHEDULER_KEYS = ("schedule_mode", "max_num_batched_tokens", "prefill_policy", "tbt_slo_ms", "slo_control",
                  "slo_tail_share", "prefill_order", "max_queue_wait_ms", "max_kv_wait_ms", "ttft_slo_ms", "num_stages",
                  "group_token_thresholds", "enable_prefix_caching")
RATIO_METRICS = ("mean_ttft", "p99_ttft", "p99_tbt", "goodput", "slo_attainment")

LAYERED_SLO100 = {"schedule_mode": "layered", "max_num_batched_tokens": 8192, "prefill_policy": "slo", "tbt_slo_ms": 100,
                  "slo_control": "tail"}
CHUNKED_SLO100 = {**LAYERED_SLO100, "schedule_mode": "chunked"}
PRESETS = {
    "cpu": {
        "name": "replay_cpu",
        "description": "Demo model on the CPU: layered under the SLO policy (short-first, deadline and FCFS "
                       "orders) vs static chunked, tiny ShareGPT.",
        "parameters": {"model": "demo_model", "device": "cpu", "num_stages": 4, "max_num_seqs": 16,
                       "max_model_len": 1024, "enable_prefix_caching": False},
        "engines": [
            {"label": "layered-slo-tail-sf", "parameters": {"schedule_mode": "layered", "max_num_batched_tokens": 256,
                                                            "prefill_policy": "slo", "tbt_slo_ms": 60, "num_stages": None,
                                                            "prefill_order": "short-first", "slo_control": "tail"}},
            {"label": "layered-slo-tail-edf", "parameters": {"schedule_mode": "layered", "max_num_batched_tokens": 256,
                                                             "prefill_policy": "slo", "tbt_slo_ms": 60, "num_stages": None,
                                                             "prefill_order": "deadline", "ttft_slo_ms": 1000,
                                                             "slo_control": "tail"}},
            {"label": "layered-slo", "parameters": {"schedule_mode": "layered", "max_num_batched_tokens": 256,
                                                    "prefill_policy": "slo", "tbt_slo_ms": 60, "num_stages": None,
                                                    "slo_control": "fixed"}},
            {"label": "chunked-64", "parameters": {"schedule_mode": "chunked", "max_num_batched_tokens": 64}},
        ],
        "workloads": [{"name": "sharegpt", "kind": "sharegpt", "requests": 48, "seed": 0, "scale": 0.1,
                       "max_output_tokens": 32}],
        "request_rates": {"sharegpt": [16.0]},
        "slo": {"ttft_ms": 1000, "tbt_ms": 200},
    },
    "gpu": {
        "name": "replay_gpu",
        "description": "Qwen3-30B-A3B shapes, dummy weights, bf16, CUDA graphs; the issue-23 engines at a 100 ms "
                       "TBT SLO (-tail: closed-loop control, tail85: its setpoint at 85%, -sf: short-first order, "
                       "-kvwait: max_kv_wait_ms 1000, "
                       "-edf: deadline order at the 2 s TTFT SLO; "
                       "layered-slo100 and chunked-slo100 are the open-loop policy the sweeps measured); 300 requests "
                       "per cell.",
        "parameters": {"model": "perf/models/qwen3-30b-a3b", "load_format": "dummy", "device": "cuda",
                       "dtype": "bfloat16", "max_num_seqs": 256, "seed": 0, "enable_prefix_caching": False},
        "engines": [
            {"label": "layered-slo100-tail-sf", "parameters": {**LAYERED_SLO100, "prefill_order": "short-first"}},
            {"label": "layered-slo100-tail85-sf", "parameters": {**LAYERED_SLO100, "prefill_order": "short-first",
                                                                 "slo_tail_share": 0.85}},
            {"label": "layered-slo100-tail-edf", "parameters": {**LAYERED_SLO100, "prefill_order": "deadline",
                                                                "ttft_slo_ms": 2000}},
            {"label": "layered-slo100-tail", "parameters": LAYERED_SLO100},
            {"label": "layered-slo100", "parameters": {**LAYERED_SLO100, "slo_control": "fixed"}},
            {"label": "layered-slo100-kvwait", "parameters": {**LAYERED_SLO100, "slo_control": "fixed",
                                                              "max_kv_wait_ms": 1000}},
            {"label": "chunked-2048", "parameters": {"schedule_mode": "chunked", "max_num_batched_tokens": 2048}},
            {"label": "chunked-2048-sf", "parameters": {"schedule_mode": "chunked", "max_num_batched_tokens": 2048,
                                                        "prefill_order": "short-first"}},
            {"label": "chunked-slo100-tail", "parameters": CHUNKED_SLO100},
            {"label": "chunked-slo100", "parameters": {**CHUNKED_SLO100, "slo_control": "fixed"}},
            {"label": "chunked-512", "parameters": {"schedule_mode": "chunked", "max_num_batched_tokens": 512}},
        ],
        "workloads": [{"name": "sharegpt", "kind": "sharegpt", "requests": 300, "seed": 0, "max_output_tokens": 128},
                      {"name": "arxiv", "kind": "arxiv", "requests": 300, "seed": 0}],
        "request_rates": {"sharegpt": [4.0, 8.0, 16.0], "arxiv": [1.0, 2.0, 4.0]},
        "slo": {"ttft_ms": 2000, "tbt_ms": 100},
    },
}


def engine_args(config: dict, engine: dict) -> EngineArgs:
    """A sweep config's parameters (config.pbtxt strings or JSON values) typed as the server types them."""
    stray = sorted(set(engine["parameters"]) - set(SCHEDULER_KEYS))
    if stray:
        raise SystemExit(f"engine {engine['label']}: {', '.join(stray)} cannot differ between engines here "
                         f"(they share one executor); put them in the config's parameters")
    merged = {**config["parameters"], **engine["parameters"]}
    raw = {k: "none" if v is None else str(v) for k, v in merged.items()}
    return EngineArgs.from_dict(resolve_engine_config(raw, engine_field_types(EngineArgs), str(ROOT), env={}))


def workload_requests(spec: WorkloadSpec, model: Path, mml: int) -> list[tuple[list[int] | str, int]]:
    """(prompt, max_tokens) per request: the sweep's perf_analyzer data, so both send the same."""
    entries = input_data(spec, model, mml)["data"]
    return [(e["input_ids"]["content"] if "input_ids" in e else e["text_input"][0], e["max_tokens"][0])
            for e in entries]


def poisson_arrivals(n: int, rate: float, seed: str) -> list[float]:
    """Seconds from the start: the first at 0, then exponential gaps of mean 1/rate."""
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def ttft_budgets(n: int, shares: list[tuple[float, float]], seed: str) -> list[float | None]:
    """Each request's own TTFT budget in ms, drawn with the given shares ([(share, ms), ...], summing
    to 1; none: every request has the config's); seeded, so every engine and rate sees the same."""
    if not shares:
        return [None] * n
    rng = random.Random(seed)
    return rng.choices([ms for _, ms in shares], weights=[share for share, _ in shares], k=n)


def drive(engine: LLMEngine, requests: list[tuple[list[int] | str, int]], arrivals: list[float],
          tag: str, budgets: list[float | None] | None = None) -> list[dict]:
    """Serves the requests at their arrival times (seconds from now); one analyze record each. A
    request's TTFT budget reaches the engine where its prefill_order reads it ("deadline"), and
    its record in every case (its TTFT SLO)."""
    budgets = budgets or [None] * len(requests)
    sends = engine.args.prefill_order == "deadline"
    start = time.monotonic()
    due = [start + a for a in arrivals]
    ids = [f"{tag}-{i}" for i in range(len(requests))]
    index = {rid: i for i, rid in enumerate(ids)}
    stamps: list[list[tuple[float, list[int], str | None]]] = [[] for _ in requests]
    prompt_tokens = [0] * len(requests)
    nxt = 0
    while nxt < len(requests) or engine.has_unfinished_requests():
        now = time.monotonic()
        while nxt < len(requests) and due[nxt] <= now:
            prompt, max_tokens = requests[nxt]
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, ttft_slo_ms=budgets[nxt] if sends else None)
            engine.add_request(ids[nxt], prompt, params, arrival_time=due[nxt])
            nxt += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, due[nxt] - time.monotonic()))
            continue
        outputs = engine.step()
        done = time.monotonic()
        for out in outputs:
            i = index[out.request_id]
            stamps[i].append((done, out.new_token_ids, out.finish_reason))
            prompt_tokens[i] = out.num_prompt_tokens
    records = [export_record(t0, s, n, r[1]) for t0, s, n, r in zip(due, stamps, prompt_tokens, requests)]
    return [{**rec, "ttft_slo_ms": b} if b is not None else rec for rec, b in zip(records, budgets)]


def export_record(sent: float, stamps: list[tuple[float, list[int], str | None]], prompt_tokens: int,
                  max_tokens: int) -> dict:
    """One request as a perf_analyzer export entry, read by analyze.request_record."""
    entry = {"timestamp": round(sent * 1e9), "response_timestamps": [round(t * 1e9) for t, _, _ in stamps],
             "response_outputs": [{"output_ids": ids, "finish_reason": reason or ""} for _, ids, reason in stamps],
             "request_inputs": {"max_tokens": max_tokens}}
    return {**request_record(entry), "prompt_tokens": prompt_tokens}


def counters(stats: EngineStats, finished: int) -> dict[str, float]:
    """The engine's cumulative counters under the names the server publishes."""
    out = {name: float(getattr(stats, field) or 0.0) for field, (name, labels) in STAT_COUNTERS.items()
           if not labels}
    if stats.energy_joules is None:
        del out["lp:gpu_energy_joules_total"]
    return {**out, "lp:request_success_total": float(finished)}


def weighted_percentile(ordered: np.ndarray, weights: np.ndarray, q: float) -> float:
    """analyze.percentile (nearest rank) of the multiset holding ordered[j] weights[j] times."""
    cum = np.cumsum(weights)
    if not len(cum) or cum[-1] == 0:
        return math.nan
    return float(ordered[np.searchsorted(cum, max(1, math.ceil(q * cum[-1])))])


def bootstrap_ratio(num: Callable[[np.ndarray], float], den: Callable[[np.ndarray], float], n: int,
                    resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float | None]:
    """num / den with a percentile bootstrap CI. Both are statistics of n paired requests, given as a
    function of how many times each request is drawn (all ones: the observed sample), so one draw
    serves both sides and a resample costs no copying of the data."""
    ones = np.ones(n, dtype=np.int64)
    point = _div(num(ones), den(ones))
    draws = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    ratios = [r for r in (_div(num(c), den(c)) for c in draws) if math.isfinite(r)]
    if not math.isfinite(point) or not ratios:
        return {"ratio": None if not math.isfinite(point) else point, "lo": None, "hi": None}
    tail = (1.0 - level) / 2
    return {"ratio": point, "lo": percentile(ratios, tail), "hi": percentile(ratios, 1.0 - tail)}


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def cell_statistics(records: list[dict], slo: dict, duration_s: float) -> dict[str, Callable[[np.ndarray], float]]:
    """RATIO_METRICS of one cell as functions of per-request draw counts."""
    ttft = np.array([r["ttft_ms"] for r in records])
    good = np.array([all(meets(r, slo)) and r["ok"] for r in records], dtype=float)
    ttft_order = np.argsort(ttft, kind="stable")
    gaps = np.array([g for r in records for g in r["tbt_ms"]])
    owner = np.repeat(np.arange(len(records)), [len(r["tbt_ms"]) for r in records])
    gap_order = np.argsort(gaps, kind="stable")
    return {
        "mean_ttft": lambda c: float(c @ ttft) / c.sum(),
        "p99_ttft": lambda c: weighted_percentile(ttft[ttft_order], c[ttft_order], 0.99),
        "p99_tbt": lambda c: weighted_percentile(gaps[gap_order], c[owner[gap_order]], 0.99),
        "goodput": lambda c: float(c @ good) / duration_s,
        "slo_attainment": lambda c: float(c @ good) / c.sum(),
    }


def compare(cells: list[dict], requests: dict[tuple, list[dict]], numerator: str, slo: dict,
            resamples: int, seed: int) -> list[dict]:
    """numerator / every other engine, per workload and rate both ran, with paired bootstrap CIs."""
    by_key = {(c["engine"], c["workload"], c["request_rate"]): c for c in cells}
    rows = []
    for cell in cells:
        key = (numerator, cell["workload"], cell["request_rate"])
        if cell["engine"] == numerator or key not in by_key:
            continue
        mine, theirs = requests[key], requests[(cell["engine"], cell["workload"], cell["request_rate"])]
        num = cell_statistics(mine, slo, by_key[key]["duration_s"])
        den = cell_statistics(theirs, slo, cell["duration_s"])
        rows.append({"numerator": numerator, "engine": cell["engine"], "workload": cell["workload"],
                     "request_rate": cell["request_rate"], "requests": len(mine),
                     **{m: bootstrap_ratio(num[m], den[m], len(mine), resamples, seed=seed) for m in RATIO_METRICS}})
    return rows


def device_name(executor: Executor) -> str:
    device = executor.runner.device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def commit() -> str:
    """This checkout's commit (with -dirty when edited); a copy without .git says so."""
    proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown (not a git checkout)"


class Replay:
    """Runs every engine over every workload and rate of a config, on one shared executor, and
    rewrites the report after every cell (a run killed at its time limit keeps what it measured)."""

    def __init__(self, config: dict, slo: dict, args: argparse.Namespace) -> None:
        self.config, self.slo, self.out_dir = config, slo, args.out_dir
        self.seed, self.resamples = args.seed, args.resamples
        self.deadline = time.monotonic() + (args.deadline_s or math.inf)
        self.numerator = args.numerator or config["engines"][0]["label"]
        self.meta = {"command": "python " + " ".join(sys.argv), "commit": args.commit or commit(), "machine": None}
        self.engines = {e["label"]: engine_args(config, e) for e in config["engines"]}
        self.model = Path(next(iter(self.engines.values())).model)
        self.max_model_len = max_model_len(self.model, next(iter(self.engines.values())).max_model_len)
        self.workloads = {w["name"]: workload_requests(WorkloadSpec(**w), self.model, self.max_model_len)
                          for w in config["workloads"]}
        self.budgets = {name: ttft_budgets(len(reqs), config.get("ttft_budgets", []), f"{self.seed}:{name}:budgets")
                        for name, reqs in self.workloads.items()}
        self.cells: list[dict] = []
        self.requests: dict[tuple, list[dict]] = {}
        self.skipped: list[str] = []

    def run(self) -> dict:
        """Serves everything; returns the report."""
        largest = max(self.engines.values(), key=lambda a: (a.schedule_mode == "layered", a.max_num_batched_tokens))
        executor = Executor(ModelConfig.from_dir(str(self.model)), largest, self.max_model_len)
        try:
            self.meta["machine"] = device_name(executor)
            profile = executor.profiler.profile() if any(a.prefill_policy == "slo" for a in self.engines.values()) else None
            for label, args in self.engines.items():
                cost = CostModel(profile) if args.prefill_policy == "slo" else None
                engine = LLMEngine(args, executor=executor, cost=cost)
                for name, requests in self.workloads.items():
                    self.run_workload(engine, label, name, requests)
        finally:
            executor.shutdown()
        return self.save()

    def run_workload(self, engine: LLMEngine, label: str, name: str, requests: list) -> None:
        drive(engine, requests[:1], [0.0], f"{label}-{name}-warmup")
        for rate in self.config["request_rates"][name]:
            if self.deadline - time.monotonic() < len(requests) / rate + 10:  # it would be cut off: skip it whole
                self.skipped.append(f"{label}/{name}-r{rate:g}")
                print(f"[replay] deadline: skipping {self.skipped[-1]}", file=sys.stderr, flush=True)
                continue
            arrivals = poisson_arrivals(len(requests), rate, f"{self.seed}:{name}:{rate:g}")
            before, t0 = counters(engine.get_stats(), 0), time.monotonic()
            records = drive(engine, requests, arrivals, f"{label}-{name}-r{rate:g}", self.budgets[name])
            delta = {k: v - before.get(k, 0.0) for k, v in counters(engine.get_stats(), len(records)).items()}
            summary = summarize_run(records, delta, self.slo)
            self.cells.append({"engine": label, "schedule_mode": engine.args.schedule_mode, "workload": name,
                               "request_rate": rate, "wall_s": time.monotonic() - t0,
                               "tail_scale": tail_scale(engine), **summary})
            self.requests[(label, name, rate)] = records
            print(f"[replay] {label}/{name}-r{rate:g}: {summary['succeeded']}/{summary['requests']} ok, "
                  f"mean TTFT {fmt(summary['ttft_ms']['mean'], 0)} ms, p99 TBT {fmt(summary['tbt_ms']['p99'])} ms, "
                  f"SLO {fmt(summary['slo_attainment'], 2)} in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
            self.save()

    def save(self) -> dict:
        """replay.json, replay.md and requests.json of the cells so far."""
        report = {**self.meta, "config": self.config, "seed": self.seed, "slo": self.slo, "resamples": self.resamples,
                  "cells": self.cells, "skipped": self.skipped,
                  "ratios": compare(self.cells, self.requests, self.numerator, self.slo, self.resamples, self.seed)}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "replay.json").write_text(json.dumps(report, indent=1))
        (self.out_dir / "replay.md").write_text(markdown(report))
        (self.out_dir / "requests.json").write_text(json.dumps(
            [{"engine": e, "workload": w, "request_rate": r,
              "requests": [compact(rec) for rec in recs]}
             for (e, w, r), recs in self.requests.items()]))
        return report


def tail_scale(engine: LLMEngine) -> float | None:
    """Where the SLO policy's closed-loop control left its planning target (share of tbt_slo_ms)."""
    policy = engine.scheduler.policy
    return policy.control.scale if isinstance(policy, SloPolicy) and policy.control else None


def compact(rec: dict) -> dict:
    """A request's record for requests.json: times in ms to the microsecond (a GPU cell of 300
    requests keeps ~40k gaps), the absolute clock stamps dropped."""
    def us(v: object) -> object:
        return round(v, 3) if isinstance(v, float) else [us(x) for x in v] if isinstance(v, list) else v
    return {k: us(v) for k, v in rec.items() if not k.endswith("_ns")}


def ci(r: dict) -> str:
    return "-" if r["ratio"] is None else f"{r['ratio']:.2f} [{fmt(r['lo'], 2)}, {fmt(r['hi'], 2)}]"


def budget_note(config: dict) -> str:
    shares = config.get("ttft_budgets")
    if not shares:
        return ""
    return " (each request's own: " + ", ".join(f"{share:.0%} at {ms:g} ms" for share, ms in shares) + ")"


def markdown(report: dict) -> str:
    slo = report["slo"]
    lines = [f"# Serving replay: {report['config']['name']} ({report['machine']})", "",
             f"Command: `{report['command']}`  ", f"Commit: {report['commit']}  ",
             f"SLO: TTFT <= {slo['ttft_ms']:g} ms{budget_note(report['config'])}, per-request p99 TBT "
             f"<= {slo['tbt_ms']:g} ms", "",
             "| engine | workload | rate | ok/n | TTFT mean/p50/p99 ms | TBT mean/p50/p99 ms "
             "| SLO att. TTFT / TBT / both | goodput req/s | out tok/s | J/token |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["cells"]:
        t, g = c["ttft_ms"], c["tbt_ms"]
        lines.append(
            f"| {c['engine']} | {c['workload']} | {c['request_rate']:g} | {c['succeeded']}/{c['requests']} "
            f"| {fmt(t['mean'], 0)} / {fmt(t['p50'], 0)} / {fmt(t['p99'], 0)} "
            f"| {fmt(g['mean'])} / {fmt(g['p50'])} / {fmt(g['p99'])} "
            f"| {fmt(c['slo_ttft_attainment'], 2)} / {fmt(c['slo_tbt_attainment'], 2)} / {fmt(c['slo_attainment'], 2)} "
            f"| {fmt(c['goodput'], 2)} | {fmt(c['output_token_throughput'])} | {fmt(c['energy_j_per_token'], 4)} |")
    if report["ratios"]:
        lines += ["", f"Ratios with 95% paired bootstrap CIs ({report['resamples']} resamples of the requests):", "",
                  "| pair | workload | rate | mean TTFT | P99 TTFT | P99 TBT | goodput | SLO attainment |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['numerator']} / {r['engine']} | {r['workload']} | {r['request_rate']:g} | "
                  + " | ".join(ci(r[m]) for m in RATIO_METRICS) + " |" for r in report["ratios"]]
    if report["skipped"]:
        lines += ["", f"Skipped (deadline): {', '.join(report['skipped'])}"]
    return "\n".join(lines) + "\n"


def recompare(run_dir: Path, numerator: str | None) -> dict:
    """An earlier run's report (replay.json, requests.json in run_dir) with its ratios recomputed
    against another numerator engine: the requests are the run's, so no GPU is needed."""
    report = json.loads((run_dir / "replay.json").read_text())
    requests = {(c["engine"], c["workload"], c["request_rate"]): c["requests"]
                for c in json.loads((run_dir / "requests.json").read_text())}
    numerator = numerator or report["config"]["engines"][0]["label"]
    report["ratios"] = compare(report["cells"], requests, numerator, report["slo"], report["resamples"], report["seed"])
    return report


def load_config(args: argparse.Namespace) -> dict:
    """The preset or config file, narrowed and resized by the command line."""
    config = json.loads(args.config.read_text()) if args.config else json.loads(json.dumps(PRESETS[args.preset]))
    if args.engines:
        config["engines"] = [e for e in config["engines"] if e["label"] in args.engines]
    if args.workloads:
        config["workloads"] = [w for w in config["workloads"] if w["name"] in args.workloads]
    if args.rates:
        config["request_rates"] = {w["name"]: args.rates for w in config["workloads"]}
    if args.requests:
        config["workloads"] = [{**w, "requests": args.requests} for w in config["workloads"]]
    for entry in args.param or []:
        key, sep, value = entry.partition("=")
        if not sep:
            raise SystemExit(f"--param {entry!r}: expected KEY=VALUE")
        config["parameters"] = {**config["parameters"], key: value}
    if args.ttft_budgets:
        config["ttft_budgets"] = parse_budgets(args.ttft_budgets)
    if not config["engines"] or not config["workloads"]:
        raise SystemExit("no engine or no workload left to run")
    return config


def parse_budgets(entries: list[str]) -> list[tuple[float, float]]:
    """["0.3:500", "0.7:5000"] -> [(0.3, 500.0), (0.7, 5000.0)]; shares in (0, 1] summing to 1."""
    try:
        shares = [(float(share), float(ms)) for share, ms in (e.split(":") for e in entries)]
    except ValueError:
        raise SystemExit(f"--ttft-budgets {' '.join(entries)}: expected SHARE:MS pairs") from None
    if any(not 0 < share <= 1 or ms <= 0 for share, ms in shares) or abs(sum(s for s, _ in shares) - 1) > 1e-6:
        raise SystemExit("--ttft-budgets: shares in (0, 1] summing to 1, budgets > 0 ms")
    return shares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS))
    source.add_argument("--config", type=Path, help="a sweep config (perf/sweep_configs/*.json)")
    source.add_argument("--recompare", type=Path, metavar="RUN_DIR",
                        help="print an earlier run's report with its ratios against --numerator (no run)")
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--engines", nargs="*", help="engine labels to run (default: all)")
    ap.add_argument("--workloads", nargs="*", help="workload names to run (default: all)")
    ap.add_argument("--requests", type=int, help="requests per cell (default: the config's)")
    ap.add_argument("--rates", type=float, nargs="*", help="request rates of every workload (default: the config's)")
    ap.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="a shared engine parameter, as config.pbtxt spells it (e.g. model=perf/models/qwen3-8b)")
    ap.add_argument("--numerator", help="the engine every other is compared with (default: the first)")
    ap.add_argument("--seed", type=int, default=0, help="arrival times")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--ttft-slo-ms", type=float)
    ap.add_argument("--tbt-slo-ms", type=float)
    ap.add_argument("--deadline-s", type=float, help="skip cells that would end later than this")
    ap.add_argument("--ttft-budgets", nargs="*", metavar="SHARE:MS",
                    help="mixed per-request TTFT SLOs, e.g. 0.3:500 0.7:5000 (interactive and batch traffic): "
                         "each request's budget is its TTFT SLO, sent to engines with prefill_order deadline")
    ap.add_argument("--commit", help="the commit measured (default: git describe of this checkout)")
    args = ap.parse_args()
    if args.recompare:
        print(markdown(recompare(args.recompare, args.numerator)))
        return
    if args.out_dir is None:
        ap.error("--out-dir is required to run")
    config = load_config(args)
    override = {k: v for k, v in (("ttft_ms", args.ttft_slo_ms), ("tbt_ms", args.tbt_slo_ms)) if v is not None}
    print(markdown(Replay(config, {**DEFAULT_SLO, **config.get("slo", {}), **override}, args).run()))


if __name__ == "__main__":
    main()

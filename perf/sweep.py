"""One command for a whole serving sweep: engine configurations x workloads x request rates.

For each engine entry of the config a tritonserver serves model_repository/laminar with that
entry's parameters (schedule_mode, max_num_batched_tokens, num_stages, model, load_format,
device, ...). Per workload it sends a short warm-up, then per request rate it scrapes /metrics,
runs perf_analyzer (gRPC, --streaming, Poisson arrivals via --request-rate-range R
--request-distribution poisson, --request-count N, --profile-export-file) and scrapes /metrics
again. Everything lands under the output directory, then analyze.py and plots.py run on it.

    python perf/sweep.py --config perf/sweep_configs/cpu_smoke.json --out-dir /tmp/sweep

Layout: sweep.json (the manifest: config, runs with their metric deltas), workloads/<name>.json
(perf_analyzer input data, identical for every engine), <engine>/server.log,
<engine>/<workload>-r<rate>.json (profile exports) and .log, analysis.json/.md, *.png.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import analyze
import plots
from run_perf_analyzer import find_perf_analyzer
from workloads import WorkloadSpec, input_data, max_model_len

from laminar.client.triton_server import ROOT, TritonServer, write_variant

MODEL_NAME = "laminar"
# Counters whose change over a run is kept (summed over label sets of our model or of the GPUs).
SCRAPED = ("lp:prompt_tokens_total", "lp:generation_tokens_total", "lp:expert_weight_bytes_total",
           "lp:num_preemptions_total", "lp:request_success_total", "lp:request_aborted_total",
           "lp:gpu_energy_joules_total", "nv_energy_consumption", "nv_inference_request_failure",
           "lp:prefix_cache_queries_total", "lp:prefix_cache_hits_total")
_SAMPLE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name: sum over label sets}, for SCRAPED names of this model (or no model)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in SCRAPED:
            continue
        model = re.search(r'model="([^"]*)"', m.group(2) or "")
        if model and model.group(1) != MODEL_NAME:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return parse_metrics(r.read().decode())


def settled_scrape(url: str, tries: int = 20, pause: float = 0.25) -> dict[str, float]:
    """A scrape once two in a row agree: the engine publishes its counters just after the last
    response, so an immediate scrape can miss the final step."""
    last = scrape(url)
    for _ in range(tries):
        time.sleep(pause)
        now = scrape(url)
        if now == last:
            break
        last = now
    return last


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def threads_for(rate: float, cap: int) -> int:
    """Few sender threads: each keeps its own Poisson schedule and perf_analyzer waits about one
    inter-arrival gap per thread after the last request, so 16 threads at 0.5 req/s idle ~30 s.
    Sends are asynchronous, so one thread per 4 req/s keeps up."""
    return max(1, min(cap, math.ceil(rate / 4)))


def perf_analyzer_cmd(url: str, data: Path, export: Path, rate: float, count: int, pa: dict) -> list[str]:
    """One measured run at one rate; the range is spelled R:R:1 because a bare R < 1 would range
    up to the default end 1.0, which perf_analyzer refuses with --request-count."""
    return [find_perf_analyzer(), "-m", MODEL_NAME, "-u", url, "-i", "grpc", "--streaming",
            "--input-data", str(data), "--profile-export-file", str(export),
            "--request-rate-range", f"{rate:g}:{rate:g}:1", "--request-distribution", "poisson",
            "--request-count", str(count), "--max-threads", str(threads_for(rate, pa.get("max_threads", 16))),
            *pa.get("extra_args", [])]


def warmup_cmd(url: str, data: Path, export: Path, count: int) -> list[str]:
    return [find_perf_analyzer(), "-m", MODEL_NAME, "-u", url, "-i", "grpc", "--streaming",
            "--input-data", str(data), "--profile-export-file", str(export),
            "--concurrency-range", "1", "--request-count", str(count)]


def run_logged(cmd: list[str], log: Path, timeout: float) -> int:
    """Runs cmd with output to log; a timeout is reported as rc 124 (like timeout(1))."""
    with log.open("w") as f:
        f.write("+ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


def resolve_model(path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (ROOT / p).resolve())


class Sweep:
    """Runs one config; `runs` is the manifest list, appended as runs finish."""

    def __init__(self, config: dict, out: Path, deadline: float) -> None:
        self.config, self.out, self.deadline = config, out, deadline
        self.runs: list[dict] = []
        self.failures: list[str] = []
        self.skipped: list[str] = []  # runs the deadline left no time for
        self.pa = config.get("perf_analyzer", {})
        self.model = resolve_model(config["parameters"]["model"])
        self.workloads = [WorkloadSpec(**w) for w in config["workloads"]]
        for spec in self.workloads:  # perf_analyzer refuses --request-count below the rate
            if any(spec.requests < rate for rate in config["request_rates"][spec.name]):
                raise ValueError(f"workload {spec.name}: requests must be >= every request rate")

    def write_workloads(self) -> dict[str, Path]:
        """Input data per workload, written once so every engine gets identical prompts."""
        mml = config_int(self.config["parameters"].get("max_model_len"))
        files = {}
        for spec in self.workloads:
            path = self.out / "workloads" / f"{spec.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(input_data(spec, Path(self.model), max_model_len(Path(self.model), mml))))
            files[spec.name] = path
        return files

    def run(self) -> None:
        data = self.write_workloads()
        for engine in self.config["engines"]:
            if time.monotonic() > self.deadline:
                self.skip(f"{engine['label']}/*")
                continue
            try:
                self.run_engine(engine, data)
            except RuntimeError as e:  # the server did not come up: record it, go on with the others
                self.failures.append(f"{engine['label']}: {str(e)[-2000:]}")
                print(f"[sweep] {engine['label']} failed: {str(e)[-2000:]}", file=sys.stderr)
            self.save()

    def run_engine(self, engine: dict, data: dict[str, Path]) -> None:
        label = engine["label"]
        edir = self.out / label
        edir.mkdir(parents=True, exist_ok=True)
        params = {k: str(v) for k, v in {**self.config["parameters"], **engine["parameters"]}.items()}
        params["model"] = self.model
        write_variant(edir / "repo", MODEL_NAME, params)
        start = time.monotonic()
        server = TritonServer(edir / "repo", {}, edir / "server.log")
        try:
            server.wait_ready(max(1.0, min(self.config.get("server_ready_timeout_s", 600), self.remaining())))
            print(f"[sweep] {label}: server ready in {time.monotonic() - start:.1f}s", file=sys.stderr)
            metrics_url = f"http://localhost:{server.metrics_port}/metrics"
            for spec in self.workloads:
                self.run_workload(label, params, spec, data[spec.name], server.grpc_url, metrics_url, edir)
        finally:
            server.stop()

    def run_workload(self, label: str, params: dict, spec: WorkloadSpec, data: Path, url: str,
                     metrics_url: str, edir: Path) -> None:
        timeout = self.pa.get("timeout_s", 600)
        warm = self.pa.get("warmup_requests", 1)
        if warm and self.remaining() > 0:
            run_logged(warmup_cmd(url, data, edir / f"{spec.name}-warmup.json", warm),
                       edir / f"{spec.name}-warmup.log", min(timeout, self.remaining()))
        for rate in self.config["request_rates"][spec.name]:
            stem = f"{spec.name}-r{rate:g}"
            if self.remaining() < spec.requests / rate + 10:  # it would be cut off: skip it whole
                self.skip(f"{label}/{stem}")
                continue
            before, t0 = settled_scrape(metrics_url), time.time()
            cmd = perf_analyzer_cmd(url, data, edir / f"{stem}.json", rate, spec.requests, self.pa)
            rc = run_logged(cmd, edir / f"{stem}.log", min(timeout, self.remaining()))
            after = settled_scrape(metrics_url)
            print(f"[sweep] {label}/{stem}: rc={rc} in {time.time() - t0:.1f}s", file=sys.stderr)
            self.runs.append({
                "engine": label, "schedule_mode": params.get("schedule_mode"), "parameters": params,
                "workload": spec.name, "request_rate": rate, "requests": spec.requests, "rc": rc,
                "export": f"{label}/{stem}.json", "wall_s": time.time() - t0,
                "metrics_delta": delta(before, after),
            })

    def skip(self, what: str) -> None:
        self.skipped.append(what)
        print(f"[sweep] deadline: skipping {what}", file=sys.stderr)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        manifest = {"config": self.config, "runs": self.runs, "failures": self.failures, "skipped": self.skipped}
        (self.out / "sweep.json").write_text(json.dumps(manifest, indent=1))


def config_int(value: object) -> int | None:
    return int(value) if value not in (None, "") else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="perf/sweep_configs/<name>.json")
    parser.add_argument("--out-dir", type=Path, help="default: perf/results/sweeps/<config name>")
    parser.add_argument("--deadline-s", type=float, help="skip runs that would start later than this "
                        "(default: the config's deadline_s, else none)")
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    out = args.out_dir or ROOT / "perf" / "results" / "sweeps" / config["name"]
    out.mkdir(parents=True, exist_ok=True)
    budget = args.deadline_s or config.get("deadline_s") or float("inf")
    # SIGTERM (e.g. from timeout(1)) unwinds like Ctrl-C, so the running server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sweep = Sweep(config, out, time.monotonic() + budget)
    sweep.save()
    sweep.run()
    sweep.save()
    analyze.write(out, analyze.analyze_sweep(out))
    plots.plot_sweep(out)
    failed = [r for r in sweep.runs if r["rc"] != 0]
    return 1 if failed or sweep.failures or not sweep.runs else 0


if __name__ == "__main__":
    sys.exit(main())

"""Measures the serving-reliability figures of issue 11 on real tritonservers started here.

    .venv/bin/python perf/reliability.py --out perf/results/reliability-cpu.json

Each figure runs against its own server on the demo checkpoint (CPU) through laminar.client:
tritonclient over gRPC, /proc for the server's fds and RSS.

- cancel_leak: fds and RSS of tritonserver before and after N gRPC cancels mid-stream;
- sigterm_after_cancels: seconds from SIGTERM to exit after some cancels, and what is left;
- long_request_shutdown: under the supervisor, SIGTERM during a request longer than the exit
  timeout: when the request ended, when the server exited and with what, what is left;
- stub_kill: under the supervisor, seconds from kill -9 of the stub until every in-flight
  stream got its error, and until the server is ready again;
- big_prompt_stall: the largest gap between a running stream's responses while a 5 MB prompt
  (and one just under the byte bound, which is tokenized) is refused, against its normal gap.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from laminar.client.grpc_stream import Stream, generate, greedy_tensors, text
from laminar.client.triton_server import ROOT, TritonServer, wait_for, write_variant
from laminar_supervisor.processes import shm_path

PROMPT = "The quick brown fox"


def start(work: Path, name: str, supervised: bool = False) -> TritonServer:
    repo = work / name
    write_variant(repo, "laminar", {})
    server = TritonServer(repo, {"LAMINAR_MODEL": str(ROOT / "demo_model")}, work / f"{name}.log", supervised)
    server.wait_ready()
    return server


def proc_status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(fields["Threads"]),
            "rss_kb": int(fields["VmRSS"].split()[0])}


def cancel_mid_stream(url: str) -> None:
    stream = Stream(url)
    result = stream.send("cancel-me", greedy_tensors(PROMPT, 2000))
    wait_for(lambda: len(result.responses) >= 1, timeout=60)
    stream.close(cancel=True)


def cancel_leak(work: Path, n: int) -> dict:
    server = start(work, "cancel")
    try:
        for _ in range(20):
            cancel_mid_stream(server.grpc_url)
        time.sleep(2)
        before = proc_status(server.proc.pid)
        for _ in range(n):
            cancel_mid_stream(server.grpc_url)
        time.sleep(2)
        after = proc_status(server.proc.pid)
    finally:
        server.stop()
    return {"cancels": n, "before": before, "after": after,
            "fd_growth_per_1000": (after["fds"] - before["fds"]) * 1000 / n,
            "rss_growth_mb_per_1000": (after["rss_kb"] - before["rss_kb"]) / 1024 * 1000 / n}


def sigterm_after_cancels(work: Path, n: int) -> dict:
    server = start(work, "sigterm")
    stubs = server.stubs()
    for _ in range(n):
        cancel_mid_stream(server.grpc_url)
    time.sleep(1)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(120)
    took = time.monotonic() - started
    server.stop()
    return {"cancels": n, "exit_seconds": round(took, 2), "returncode": server.proc.returncode,
            "stubs_left": [p for p in stubs if os.path.exists(f"/proc/{p}")],
            "shm_left": [s.shm_region for s in stubs.values() if shm_path(s.shm_region).exists()]}


def long_request_shutdown(work: Path) -> dict:
    server = start(work, "longshutdown", supervised=True)
    stubs = server.stubs()
    stream = Stream(server.grpc_url)
    result = stream.send("long", greedy_tensors(PROMPT, 3900))
    wait_for(lambda: len(result.responses) >= 2, timeout=60)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    result.done.wait(120)
    ended = time.monotonic() - started
    stream.close()
    rc = server.proc.wait(120)
    exited = time.monotonic() - started
    server.stop()
    return {"exit_timeout_seconds": 20, "tokens_before_end": len(result.responses), "error": result.error,
            "request_ended_seconds": round(ended, 2), "exit_seconds": round(exited, 2), "returncode": rc,
            "aborted": "Signal (6)" in server.log(),
            "stubs_left": [p for p in stubs if os.path.exists(f"/proc/{p}")],
            "shm_left": [s.shm_region for s in stubs.values() if shm_path(s.shm_region).exists()]}


def stub_kill(work: Path, n: int) -> dict:
    server = start(work, "stubkill", supervised=True)
    streams = [Stream(server.grpc_url) for _ in range(n)]
    try:
        results = [s.send(f"s{i}", greedy_tensors(PROMPT, 3000)) for i, s in enumerate(streams)]
        wait_for(lambda: all(len(r.responses) >= 2 for r in results), timeout=60)
        (stub,) = server.stubs().values()
        killed = time.monotonic()
        os.kill(stub.pid, signal.SIGKILL)
        errored = []

        def note(r):
            r.done.wait(120)
            errored.append(time.monotonic() - killed)
        threads = [threading.Thread(target=note, args=(r,)) for r in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: server.is_ready() and bool(set(server.stubs()) - {stub.pid}), timeout=240)
        ready = time.monotonic() - killed
        ok = generate(server.grpc_url, greedy_tensors(PROMPT, 3)).error is None
    finally:
        for s in streams:
            s.close()
        server.stop()
    return {"streams": n, "all_errored_seconds": round(max(errored), 2),
            "errors": sorted({r.status or "" for r in results}), "ready_again_seconds": round(ready, 2),
            "serves_after_recovery": ok}


def gaps_during(times: list[float], start: float, end: float) -> list[float]:
    """Gaps between consecutive responses that overlap [start, end]."""
    return [b - a for a, b in zip(times, times[1:]) if b >= start and a <= end]


def stall_while(server: TritonServer, runner, prompt: str) -> tuple[float, str | None]:
    """The largest gap between the runner's responses while `prompt` is sent and refused."""
    n = len(runner.arrivals)
    wait_for(lambda: len(runner.arrivals) >= n + 10, timeout=60)
    sent = time.monotonic()
    reply = generate(server.grpc_url, {"text_input": text(prompt)})
    answered = time.monotonic()
    n = len(runner.arrivals)
    wait_for(lambda: len(runner.arrivals) >= n + 10, timeout=60)
    return max(gaps_during(runner.arrivals, sent, answered), default=0.0), reply.error


def big_prompt_stall(work: Path, repeats: int) -> dict:
    """Against the bound read from the server's own answer to the 5 MB prompt."""
    server = start(work, "stall")
    stream = Stream(server.grpc_url)
    runner = stream.send("runner", greedy_tensors(PROMPT, 100000))
    try:
        wait_for(lambda: len(runner.arrivals) >= 20, timeout=60)
        out, prompt = {}, "word " * 1_000_000
        for label in ("5 MB", "just under the byte bound (tokenized, then refused)"):
            measured = [stall_while(server, runner, prompt) for _ in range(repeats)]
            error = measured[-1][1] or ""
            normal = statistics.median(b - a for a, b in zip(runner.arrivals, runner.arrivals[1:]))
            worst = max(stall for stall, _ in measured)
            out[label] = {"prompt_bytes": len(prompt.encode()), "error": error,
                          "normal_gap_ms": round(normal * 1000, 1), "max_gap_ms": round(worst * 1000, 1),
                          "stall_beyond_normal_ms": round((worst - normal) * 1000, 1)}
            limit = int(error.split("prompts over ")[1].split()[0]) if "prompts over" in error else 0
            prompt = "word " * (limit // 5)
        return out
    finally:
        stream.close(cancel=True)
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cancels", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="cancel_leak,sigterm_after_cancels,long_request_shutdown,stub_kill,"
                                          "big_prompt_stall")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = {"cancel_leak": lambda w: cancel_leak(w, args.cancels),
            "sigterm_after_cancels": lambda w: sigterm_after_cancels(w, 20),
            "long_request_shutdown": long_request_shutdown,
            "stub_kill": lambda w: stub_kill(w, args.streams),
            "big_prompt_stall": lambda w: big_prompt_stall(w, args.repeats)}
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            print(f"measuring {name}", file=sys.stderr)
            figures[name] = runs[name](Path(tmp))
            print(json.dumps(figures[name]), file=sys.stderr)
    doc = json.dumps({"command": " ".join(sys.argv), "figures": figures}, indent=2)
    if args.out:
        args.out.write_text(doc + "\n")
    print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())

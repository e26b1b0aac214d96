"""Mixed soak against a real tritonserver: good, bad, cancelled and killed clients at once, while
the server's fds, threads and RSS (tritonserver and its backend stub) are sampled.

    .venv/bin/python perf/soak.py --duration 1800 --out perf/results/soak-cpu.json

Starts its own server on the demo checkpoint (CPU). Every request must end as it should: good
ones with their tokens, bad ones with an error naming the problem, and every cancelled, killed
or disconnected one aborted on the server (lp:request_aborted_total counts each exactly once).
Exits non-zero when one did not, or when fds, threads or RSS grew past the slack after warm-up.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from reliability import proc_status, start

from laminar.client.grpc_stream import Stream, generate, greedy_tensors, text
from laminar.client.triton_server import TritonServer, wait_for

PROMPT = "The quick brown fox"
BAD = [
    ({"text_input": text("hi"), "end_id": np.array([-1], dtype=np.int32)}, "end_id"),
    ({"text_input": text("hi"), "sampling_parameters": text('{"temprature": 0}')}, "temprature"),
    ({"text_input": text("hi"), "input_ids": np.array([1, 2], dtype=np.int32)}, "input_ids"),
    ({"text_input": text("word " * 1_000_000)}, "text_input"),
]


class Soak:
    def __init__(self, server: TritonServer, seed: int) -> None:
        self.server = server
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def record(self, action: str, failure: str | None = None) -> None:
        with self.lock:
            self.counts[action] += 1
            if failure:
                self.failures.append(f"{action}: {failure}")

    def good(self) -> None:
        n = self.rng.randrange(4, 33)
        result = generate(self.server.grpc_url, greedy_tensors(PROMPT, n))
        ok = result.error is None and len(result.ids) == n and result.finish_reason == "length"
        self.record("good", None if ok else f"{result.error} {len(result.ids)}/{n}")

    def bad(self) -> None:
        tensors, needle = self.rng.choice(BAD)
        result = generate(self.server.grpc_url, tensors)
        self.record("bad", None if result.error and needle in result.error else f"no error naming {needle}")

    def cancelled(self) -> None:
        stream = Stream(self.server.grpc_url)
        result = stream.send("soak-cancel", greedy_tensors(PROMPT, 2000))
        ok = wait_for(lambda: len(result.responses) >= 1, timeout=120)
        stream.close(cancel=True)
        self.record("cancelled", None if ok else "no first response")

    def killed_client(self) -> None:
        client = subprocess.Popen([sys.executable, __file__, "--client-to-kill", self.server.grpc_url],
                                  stdout=subprocess.PIPE, text=True)
        started = client.stdout.readline().strip() == "streaming"
        client.send_signal(signal.SIGKILL)
        client.wait()
        self.record("killed_client", None if started else "the client never streamed")

    def http_disconnect(self) -> None:
        body = json.dumps({"text_input": PROMPT, "max_tokens": 2000, "ignore_eos": True, "stream": True}).encode()
        with socket.create_connection(("localhost", self.server.http_port), timeout=120) as conn:
            conn.sendall(b"POST /v2/models/laminar/generate_stream HTTP/1.1\r\nHost: soak\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            ok = b"data:" in conn.recv(4096) or b"data:" in conn.recv(4096)
        self.record("http_disconnect", None if ok else "no first event")

    def worker(self, until: float) -> None:
        actions = [(self.good, 4), (self.bad, 2), (self.cancelled, 2), (self.killed_client, 1), (self.http_disconnect, 1)]
        while time.monotonic() < until and not self.stop.is_set():
            action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
            try:
                action()
            except Exception as e:  # a client-side exception is a failure to report, not to hide
                self.record(action.__name__, f"{type(e).__name__}: {e}")


def sample(server: TritonServer, started: float) -> dict | None:
    """None once the server or its stub is gone."""
    stubs = list(server.stubs())
    if len(stubs) != 1 or server.proc.poll() is not None:
        return None
    return {"t": round(time.monotonic() - started, 1), "server": proc_status(server.proc.pid),
            "stub": proc_status(stubs[0])}


def metric(server: TritonServer, name: str) -> float:
    for line in server.metrics().splitlines():
        if line.startswith(name + "{") and 'model="laminar"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def run(args: argparse.Namespace, work: Path) -> dict:
    server = start(work, "soak")
    print(f"server log: {server.log_path}", file=sys.stderr)
    try:
        soak = Soak(server, args.seed)
        started = time.monotonic()
        until = started + args.duration
        workers = [threading.Thread(target=soak.worker, args=(until,)) for _ in range(args.clients)]
        for w in workers:
            w.start()
        samples = []
        while any(w.is_alive() for w in workers):
            samples.append(sample(server, started))
            if samples[-1] is None:
                soak.failures.append(f"the server or its stub died after {time.monotonic() - started:.0f} s")
                soak.stop.set()
                break
            time.sleep(min(args.sample_every, max(0.1, until - time.monotonic())))
        for w in workers:
            w.join()
        if samples[-1] is None:
            return report(args, soak, samples[:-1], False, 0, 0, 0.0)
        aborted_expected = sum(soak.counts[a] for a in ("cancelled", "killed_client", "http_disconnect"))
        settled = wait_for(lambda: metric(server, "lp:request_aborted_total") == aborted_expected
                           and metric(server, "lp:num_requests_running") == 0, timeout=60)
        time.sleep(2)
        samples.append(sample(server, started))
        return report(args, soak, samples, settled, metric(server, "lp:request_aborted_total"), aborted_expected,
                      metric(server, "lp:kv_cache_usage_perc"))
    finally:
        server.stop()


def report(args, soak: Soak, samples: list[dict], settled: bool, aborted: float, expected: int, kv: float) -> dict:
    """Growth from the first sample after warm-up to the last (idle) one."""
    warm = next((s for s in samples if s["t"] >= args.warmup), samples[0])
    last = samples[-1]
    growth = {proc: {k: last[proc][k] - warm[proc][k] for k in last[proc]} for proc in ("server", "stub")}
    failures = list(soak.failures)
    if not settled:
        failures.append(f"server aborted {aborted:.0f} requests, clients cancelled/killed/disconnected {expected}")
    if kv != 0.0:
        failures.append(f"KV cache {kv:.4f} in use after the soak")
    for proc, g in growth.items():
        if g["fds"] > args.fd_slack or g["threads"] > args.thread_slack or g["rss_kb"] > args.rss_slack_mb * 1024:
            failures.append(f"{proc} grew: {g}")
    return {"command": " ".join(sys.argv), "duration_s": args.duration, "clients": args.clients,
            "requests": dict(soak.counts), "total_requests": sum(soak.counts.values()),
            "aborted_on_server": aborted, "growth_after_warmup": growth, "failures": failures[:50],
            "samples": samples}


def client_to_kill(url: str) -> None:
    """The killed client: streams until the soak kills it with SIGKILL."""
    stream = Stream(url)
    result = stream.send("soak-killed", greedy_tensors(PROMPT, 2000))
    wait_for(lambda: len(result.responses) >= 1, timeout=120)
    print("streaming", flush=True)
    time.sleep(3600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=6, help="concurrent client threads")
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before growth is measured")
    parser.add_argument("--fd-slack", type=int, default=2)
    parser.add_argument("--thread-slack", type=int, default=2)
    parser.add_argument("--rss-slack-mb", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--client-to-kill", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_to_kill:
        client_to_kill(args.client_to_kill)
        return 0
    work = Path(tempfile.mkdtemp(prefix="laminar-soak-"))  # kept: the server log is evidence
    result = run(args, work)
    doc = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(doc + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

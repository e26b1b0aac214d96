"""SIGTERM after OpenAI traffic, many times, under CPU load (issue 27's shutdown target: < 5 s and
no "Exit timeout expired" in every one of 20 tries; the race showed only on a loaded machine).

    .venv/bin/python perf/openai_shutdown.py --tries 20 --load 2 --out perf/results/openai-shutdown-cpu.json

Each try starts tritonserver under the supervisor with the demo checkpoint (CPU) and the OpenAI
API, sends laminar.client.openai_stack's traffic, waits for it to end, sends SIGTERM and times
the exit. --load N runs N busy processes beside it for the whole run.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from laminar.client.openai_stack import openai_traffic, sigterm_exit, start_stack

ROOT = Path(__file__).resolve().parents[1]


def burn() -> None:
    while True:
        pass


def one_try(demo_model: Path) -> dict:
    with tempfile.TemporaryDirectory() as work:
        stack = start_stack(demo_model, Path(work))
        try:
            openai_traffic(stack.url)
            took, rc, gave_up = sigterm_exit(stack.server)
        finally:
            stack.stop()
    return {"exit_s": round(took, 2), "rc": rc, "exit_timeout_expired": gave_up}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--load", type=int, default=2, help="busy processes beside the server")
    parser.add_argument("--model", default=str(ROOT / "demo_model"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    tries = []
    try:
        for i in range(args.tries):
            tries.append(one_try(Path(args.model)))
            print(i, tries[-1], flush=True)
    finally:
        for b in burners:
            b.terminate()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {"command": " ".join(sys.argv), "commit": commit, "machine": f"CPU, {multiprocessing.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tries": tries,
              "max_exit_s": max(t["exit_s"] for t in tries),
              "ok": sum(t["exit_s"] < 5 and not t["exit_timeout_expired"] and t["rc"] == 0 for t in tries)}
    print(json.dumps({k: v for k, v in report.items() if k != "tries"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""perf_analyzer against a Laminar server with prompts of exact token lengths.

Writes the input data (workloads.fixed_length_data), runs perf_analyzer over gRPC with streaming
and a profile export, then prints the per-experiment latency summary (analyze.summarize_experiments:
TTFT, TBT and E2E statistics with the nearest-rank percentiles of analyze.py).
--concurrency takes perf_analyzer's start:end:step or a list (1,4): perf_analyzer reads only the
first number of a list, so a list runs perf_analyzer once per value into one merged export.

    python perf/run_perf_analyzer.py --model-dir demo_model --lengths 64 --max-tokens 16 --concurrency 1,4 \
        --out-dir perf/results/pa -- --measurement-request-count 32
Arguments after `--` go to perf_analyzer unchanged.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from analyze import summarize_experiments
from workloads import fixed_length_data, vocab_size


def find_perf_analyzer() -> str:
    """The build.sh wrapper in this interpreter's venv first, then PATH."""
    local = Path(sys.executable).parent / "perf_analyzer"
    found = str(local) if local.exists() else shutil.which("perf_analyzer")
    if not found:
        sys.exit("perf_analyzer not found: run ./build.sh")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="localhost:8001", help="gRPC address")
    parser.add_argument("--model", default="laminar")
    parser.add_argument("--model-dir", type=Path, required=True, help="HF model directory (for vocab_size)")
    parser.add_argument("--lengths", default="128", help="comma-separated prompt lengths in tokens")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--per-length", type=int, default=4)
    parser.add_argument("--concurrency", default="1", help="a list (1,4) or a perf_analyzer range (1:8:2)")
    parser.add_argument("--requests", type=int, default=16, help="requests per measurement window")
    parser.add_argument("--stability", type=float, default=50.0,
                        help="perf_analyzer --stability-percentage (CPU runs are noisy)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("extra", nargs="*", help="extra perf_analyzer arguments (after --)")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data, export = args.out_dir / "input_data.json", args.out_dir / "profile_export.json"
    lengths = [int(x) for x in args.lengths.split(",")]
    data.write_text(json.dumps(fixed_length_data(lengths, args.max_tokens, vocab_size(args.model_dir), args.per_length, 0)))
    experiments = []
    for i, concurrency in enumerate(args.concurrency.split(",")):
        part = args.out_dir / f"profile_export.{i}.json"
        cmd = [find_perf_analyzer(), "-m", args.model, "-u", args.url, "-i", "grpc", "--streaming",
               "--input-data", str(data), "--profile-export-file", str(part),
               "--concurrency-range", concurrency, "--measurement-mode", "count_windows",
               "--measurement-request-count", str(args.requests),
               "--stability-percentage", str(args.stability), *args.extra]
        print("+", " ".join(cmd), file=sys.stderr)
        rc = subprocess.run(cmd, stdout=sys.stderr).returncode  # stdout is kept for the summary
        if rc != 0:
            return rc
        doc = json.loads(part.read_text())
        experiments += doc["experiments"]
        part.unlink()
    export.write_text(json.dumps({**doc, "experiments": experiments}))
    print(json.dumps(summarize_experiments(json.loads(export.read_text())), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

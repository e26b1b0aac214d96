"""Fused MoE end to end: this tree's kernels against a baseline checkout's and vLLM's tuned kernel, same inputs.

The baseline is another checkout's kernels/ directory (e.g. main's), loaded as a second package
with its own tables, so a kernel change is timed against what it replaces in one run on one GPU.
Shapes: Qwen3-30B-A3B TP1 and TP2 shards (bf16, vLLM's H200 tables exist for both) and GPT-OSS-20B
experts (biases, clamped SwiGLU) as MXFP4 and as bf16. Times: bench_kernels.py's (CUDA-graph
replays, L2 flushed). 'diff' is ||ours - baseline|| / ||baseline||.
Run: PYTHONPATH=backend_src:<dir holding laminar_kernels> python perf/moe_versions.py --baseline DIR --out-dir DIR
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from kernel_timing import Timer, rel_diff
from moe_bench_util import moe_inputs, mxfp4_weights
from vllm_fused_moe import vllm_fused_moe

import laminar_kernels as K

ALL = [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
SHAPES = {  # name: (E, top_k, H, I, weight format, token counts)
    "qwen3-tp1": (128, 8, 2048, 768, "bf16", ALL), "qwen3-tp2": (128, 8, 2048, 384, "bf16", [1, 64, 512, 1024, 4096]),
    "gpt-oss-mxfp4": (32, 4, 2880, 2880, "mxfp4", [1, 64, 1024, 4096]), "gpt-oss-bf16": (32, 4, 2880, 2880, "bf16+", [64, 4096]),
}
SWIGLU = (1.702, 7.0)
# Each of ours and the baseline is timed before and after the other (the faster of its two runs kept):
# timed once each, ours first, the baseline read 8% faster at 8 and 256 tokens with identical kernels.
TIMING_ORDER = ("baseline", "ours", "vllm", "ours", "baseline")


def load_package(path: Path, name: str = "baseline_kernels"):
    """Imports a kernels/ directory under another package name (its modules import each other relatively)."""
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def runs(base, shape: tuple, n_tok: int) -> dict:
    """Callables for ours, the baseline and (plain bf16 only) vLLM on one set of inputs."""
    n_experts, top_k, hidden, inter, fmt, _ = shape
    x, w13, w2, weights, ids = moe_inputs(n_tok, n_experts, top_k, hidden, inter)
    if fmt == "bf16":
        fns = {"ours": lambda: K.fused_moe(x, w13, w2, weights, ids),
               "baseline": lambda: base.fused_moe(x, w13, w2, weights, ids)}
        return fns | {"vllm": lambda: vllm_fused_moe(x, w13, w2, weights, ids)}
    gen = torch.Generator().manual_seed(0)
    b13 = (torch.randn(n_experts, 2 * inter, generator=gen) * 0.1).to("cuda", torch.bfloat16)
    b2 = (torch.randn(n_experts, hidden, generator=gen) * 0.1).to("cuda", torch.bfloat16)
    kw = {"b13": b13, "b2": b2, "swiglu": SWIGLU}
    if fmt == "mxfp4":
        (w13, s13), (w2, s2) = mxfp4_weights(n_experts, 2 * inter, hidden, gen), mxfp4_weights(n_experts, hidden, inter, gen)
        kw |= {"w13_scales": s13, "w2_scales": s2}
    return {"ours": lambda: K.fused_moe(x, w13, w2, weights, ids, **kw),
            "baseline": lambda: base.fused_moe(x, w13, w2, weights, ids, **kw)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", type=Path, required=True, help="a kernels/ directory to compare against")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    base, timer, dev = load_package(args.baseline.resolve()), Timer(), torch.cuda.get_device_name()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.shapes:
        for n_tok in SHAPES[name][5]:
            fns = runs(base, SHAPES[name], n_tok)
            row = {"shape": name, "tokens": n_tok, "diff": rel_diff(fns["ours"](), fns["baseline"]())}
            times: dict[str, float] = {}
            for key in (k for k in TIMING_ORDER if k in fns):
                times[key] = min(times.get(key, float("inf")), timer.ms(fns[key])[0] * 1e3)
            row |= {f"{k}_us": t for k, t in times.items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(args.out_dir, dev, rows)  # after every row: a run cut short keeps what it measured
    print((args.out_dir / f"moe-versions-{dev.replace(' ', '_')}.md").read_text())


def write(out_dir: Path, dev: str, rows: list[dict]) -> None:
    lines = [f"# Fused MoE: this tree vs baseline vs vLLM on {dev}", "", f"Command: `python {' '.join(sys.argv)}`  ",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians of CUDA-graph replays, L2 flushed.", "",
             "| shape | tokens | baseline (us) | ours (us) | vLLM (us) | ours vs baseline | ours vs vLLM | diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ours, vllm = r["ours_us"], r.get("vllm_us")
        vllm_time, vllm_ratio = ("-", "-") if vllm is None else (f"{vllm:.1f}", f"{vllm / ours:.3f}")
        lines.append(f"| {r['shape']} | {r['tokens']} | {r['baseline_us']:.1f} | {ours:.1f} | {vllm_time} | "
                     f"{r['baseline_us'] / ours:.3f} | {vllm_ratio} | {r['diff']:.1e} |")
    (out_dir / f"moe-versions-{dev.replace(' ', '_')}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / f"moe-versions-{dev.replace(' ', '_')}.md").write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()

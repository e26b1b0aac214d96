"""FP8 kernels against bf16 on one GPU, with their floors: the fused MoE and the dense projections.

MoE: Qwen3-30B-A3B's experts (E=128, top-8, H=2048, I=768) and their TP2 shard (I=384), bf16 vs
the same experts quantized to FP8 (128x128 block scales, as Qwen3-30B-A3B-FP8 ships them; and
per-channel scales), each through its tuned table or the heuristics. HBM floor = distinct experts
touched x expert bytes (FP8: a byte a weight plus its scales) + activations in and out, over the
measured copy bandwidth; GEMM floor = 2 * T * k * 3 * H * I over the measured matmul rate of the
format (FP8: torch._scaled_mm at 8192^3). Dense: x [T, K] @ W^T at the models' projection shapes,
bf16 torch.matmul vs every form of fp8_linear (kernels/fp8_linear.py) and the form it picks.
Times: medians of CUDA-graph replays with L2 flushed before each (perf/kernel_timing.py).
Run: PYTHONPATH=backend_src:<dir holding laminar_kernels> python perf/bench_fp8.py --out-dir perf/results/fp8-h100
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import triton
from bench_kernels import copy_rate, gemm_rate
from kernel_timing import Timer, rel_diff
from moe_bench_util import fp8_weights, moe_inputs

import laminar_kernels as K
from laminar_kernels.fp8_linear import FORMS, PROBE_ERRORS, blockwise_scaled_mm_api, pick_form
from laminar_kernels.moe_config import get_config

MOE_TOKENS = [1, 8, 64, 256, 2048, 4096, 8192]
MOE_SHAPES = {"qwen3-30b-a3b": (128, 8, 2048, 768), "qwen3-30b-a3b-tp2": (128, 8, 2048, 384)}
DENSE_TOKENS = [1, 8, 64, 256, 2048, 8192]
DENSE_SHAPES = {"qwen3-30b-a3b qkv": (5120, 2048), "qwen3-30b-a3b o": (2048, 4096),
                "qwen3-8b gate_up": (24576, 4096), "qwen3-8b down": (4096, 12288)}


def fp8_rate(timer: Timer, n: int = 8192) -> float:
    """FP8 n^3 product through torch._scaled_mm (per-tensor scales), FLOP/s."""
    a = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
    one = torch.ones((), device="cuda")
    return 2 * n**3 / (timer.ms(lambda: torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.bfloat16))[0] * 1e-3)


def bench_moe(timer: Timer, floors: dict, shapes: list[str], tokens: list[int]) -> list[dict]:
    rows = []
    bw = floors["copy_bw_GBps"] * 1e9
    for name in shapes:
        n_experts, top_k, hidden, inter = MOE_SHAPES[name]
        _, w13, w2, _, _ = moe_inputs(1, n_experts, top_k, hidden, inter)
        fp8 = {"block": (fp8_weights(w13), fp8_weights(w2)), "channel": (fp8_weights(w13, None), fp8_weights(w2, None))}
        bf16_bytes = 3 * hidden * inter * 2
        fp8_bytes = {"block": 3 * hidden * inter + 4 * 3 * triton.cdiv(hidden, 128) * triton.cdiv(inter, 128),
                     "channel": 3 * hidden * inter + 4 * (2 * inter + hidden)}
        for n_tok in tokens:
            x, _, _, weights, ids = moe_inputs(n_tok, n_experts, top_k, hidden, inter, seed=n_tok)
            touched = int(torch.unique(ids).numel())
            io_bytes = 2 * n_tok * hidden * 2
            gemm_flops = 2 * n_tok * top_k * 3 * hidden * inter
            bf16_ms, _ = timer.ms(lambda: K.fused_moe(x, w13, w2, weights, ids))
            ref = K.fused_moe(x, w13, w2, weights, ids)
            row = {"shape": name, "tokens": n_tok, "experts_touched": touched, "bf16_ms": bf16_ms,
                   "bf16_hbm_floor_ms": (touched * bf16_bytes + io_bytes) / bw * 1e3,
                   "bf16_gemm_floor_ms": gemm_flops / (floors["bf16_gemm_TFLOPs"] * 1e12) * 1e3}
            cfg = get_config(n_tok, top_k, n_experts, hidden, inter, x.dtype, x.device, "FP8")
            row["fp8_form"] = "W8A8" if cfg.get("A8") else "W8A16"
            for kind, ((q13, s13), (q2, s2)) in fp8.items():
                ms, _ = timer.ms(lambda: K.fused_moe(x, q13, q2, weights, ids, w13_scales=s13, w2_scales=s2))
                hbm = (touched * fp8_bytes[kind] + io_bytes) / bw * 1e3
                comp = gemm_flops / (floors["fp8_gemm_TFLOPs"] * 1e12) * 1e3
                out = K.fused_moe(x, q13, q2, weights, ids, w13_scales=s13, w2_scales=s2)
                row[kind] = {"ms": ms, "hbm_floor_ms": hbm, "gemm_floor_ms": comp,
                             "pct_hbm_floor": 100 * hbm / ms, "pct_floor": 100 * max(hbm, comp) / ms,
                             "speedup_vs_bf16": bf16_ms / ms, "rel_diff_vs_bf16": rel_diff(out, ref)}
            rows.append(row)
            b = row["block"]
            print(f"moe {name} T={n_tok:5d} bf16 {bf16_ms * 1e3:8.1f} us  fp8[{row['fp8_form']}] {b['ms'] * 1e3:8.1f} us "
                  f"x{b['speedup_vs_bf16']:.2f}  {b['pct_hbm_floor']:5.1f}% hbm floor  channel "
                  f"{row['channel']['ms'] * 1e3:8.1f} us  diff {b['rel_diff_vs_bf16']:.1e}", flush=True)
    return rows


def bench_dense(timer: Timer, floors: dict, tokens: list[int]) -> list[dict]:
    rows = []
    bw = floors["copy_bw_GBps"] * 1e9
    for name, (n_out, k_dim) in DENSE_SHAPES.items():
        w = torch.randn(n_out, k_dim, device="cuda").mul_(k_dim**-0.5).to(torch.bfloat16)
        quant = {kind: tuple(t[0] for t in fp8_weights(w[None], block))
                 for kind, block in (("block", (128, 128)), ("channel", None))}
        for n_tok in tokens:
            x = torch.randn(n_tok, k_dim, device="cuda").to(torch.bfloat16)
            bf16_ms, _ = timer.ms(lambda: x @ w.t())
            ref = x @ w.t()
            io = 2 * n_tok * (k_dim + n_out)
            row = {"shape": name, "N": n_out, "K": k_dim, "tokens": n_tok, "bf16_ms": bf16_ms,
                   "bf16_hbm_floor_ms": (2 * n_out * k_dim + io) / bw * 1e3}
            for kind, (q, s) in quant.items():
                hbm = (n_out * k_dim + s.numel() * 4 + io) / bw * 1e3
                forms = {}
                for form in FORMS:
                    if form == "scaled_mm" and kind == "block" and blockwise_scaled_mm_api(x.device) is None:
                        continue
                    try:
                        ms, _ = timer.ms(lambda: K.fp8_linear(x, q, s, form=form))
                    except Exception as exc:  # a form this build cannot run: recorded, not fatal
                        forms[form] = {"error": repr(exc)[:200]}
                        continue
                    forms[form] = {"ms": ms, "speedup_vs_bf16": bf16_ms / ms, "pct_hbm_floor": 100 * hbm / ms,
                                   "rel_diff_vs_bf16": rel_diff(K.fp8_linear(x, q, s, form=form), ref)}
                row[kind] = {"hbm_floor_ms": hbm, "picked": pick_form(n_tok, 128 if kind == "block" else 0, x.device),
                             "forms": forms}
            rows.append(row)
            cells = "  ".join(f"{kind}:{f}={v['ms'] * 1e3:.1f}" for kind in quant for f, v in row[kind]["forms"].items()
                              if "ms" in v)
            print(f"dense {name} T={n_tok:5d} bf16 {bf16_ms * 1e3:8.1f} us  {cells}", flush=True)
    return rows


# Tile sweeps of the Triton dense forms (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, splits of K)
# where they lose: W8A16 and W8A8 at decode sizes (weight streaming: at 1-64 tokens every form read the
# weight at under a third of HBM bandwidth on an H100, so K splits are swept there), W8A8 with block
# scales at prefill sizes.
DENSE_VARIANTS = {
    "w8a16": ([1, 8], [(16, 32, 128, 1, 4, 4, 1), (16, 32, 256, 1, 4, 4, 1), (16, 64, 256, 1, 4, 3, 1),
                       (16, 32, 512, 1, 4, 3, 1), (16, 16, 256, 1, 4, 4, 1), (16, 64, 128, 1, 4, 5, 1),
                       (16, 32, 512, 1, 4, 3, 2), (16, 32, 256, 1, 4, 4, 4), (16, 64, 256, 1, 4, 3, 4),
                       (16, 32, 128, 1, 4, 4, 8)]),
    "w8a8": ([64], [(64, 64, 128, 8, 4, 4, 1), (64, 64, 128, 8, 4, 4, 2), (64, 64, 128, 8, 4, 4, 4),
                    (64, 32, 128, 8, 4, 4, 1), (64, 32, 128, 8, 4, 4, 4), (64, 128, 128, 8, 4, 4, 8)]),
    "w8a8 prefill": ([256, 2048, 8192], [(128, 128, 128, 8, 8, 3, 1), (128, 128, 128, 8, 4, 4, 1),
                                         (64, 128, 128, 8, 4, 4, 1), (128, 256, 128, 8, 8, 3, 1),
                                         (64, 256, 128, 8, 8, 3, 1), (128, 128, 64, 8, 8, 4, 1),
                                         (256, 128, 128, 8, 8, 3, 1)]),
}


def bench_dense_variants(timer: Timer, floors: dict) -> list[dict]:
    rows = []
    for name in ("qwen3-30b-a3b qkv", "qwen3-30b-a3b o", "qwen3-8b gate_up"):
        n_out, k_dim = DENSE_SHAPES[name]
        w = torch.randn(n_out, k_dim, device="cuda").mul_(k_dim**-0.5).to(torch.bfloat16)
        q, s = (t[0] for t in fp8_weights(w[None]))
        for variant, (tokens, configs) in DENSE_VARIANTS.items():
            form = variant.split()[0]
            for n_tok in tokens:
                x = torch.randn(n_tok, k_dim, device="cuda").to(torch.bfloat16)
                for cfg in configs:
                    try:
                        ms, _ = timer.ms(lambda: K.fp8_linear(x, q, s, form=form, config=cfg))
                    except Exception as exc:  # out of shared memory / registers
                        print(f"dense variant {name} {form} T={n_tok} {cfg} failed: {repr(exc)[:100]}", flush=True)
                        continue
                    weight_ms = n_out * k_dim / (floors["copy_bw_GBps"] * 1e9) * 1e3  # one byte a weight
                    rows.append({"shape": name, "form": form, "tokens": n_tok, "config": cfg, "ms": ms,
                                 "tflops": 2 * n_tok * n_out * k_dim / ms / 1e9, "pct_weight_floor": 100 * weight_ms / ms})
                    print(f"dense variant {name} {form} T={n_tok} {cfg} {ms * 1e3:.1f} us", flush=True)
    return rows


def dense_variant_lines(rows: list[dict]) -> list[str]:
    lines = ["## Triton dense tile sweep (block scales; BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, K splits)", "",
             "| shape | form | tokens | config | us | TFLOP/s | % of weight HBM floor |",
             "|---|---|---:|---|---:|---:|---:|"]
    return lines + [f"| {r['shape']} | {r['form']} | {r['tokens']} | {tuple(r['config'])} | {r['ms'] * 1e3:.1f} | "
                    f"{r['tflops']:.0f} | {r.get('pct_weight_floor', 0):.0f} |" for r in rows]


def moe_lines(rows: list[dict]) -> list[str]:
    lines = ["## Fused MoE: bf16 vs FP8 experts (uniform random routing; FP8 through its table's form)", "",
             "| shape | tokens | experts touched | bf16 (us) | FP8 block (us) | form | speedup | FP8 HBM floor (us) | "
             "% of HBM floor | FP8 GEMM floor (us) | % of floor | FP8 channel (us) | speedup | FP8 vs bf16 diff |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b, c = r["block"], r["channel"]
        lines.append(f"| {r['shape']} | {r['tokens']} | {r['experts_touched']} | {r['bf16_ms'] * 1e3:.1f} | "
                     f"{b['ms'] * 1e3:.1f} | {r['fp8_form']} | {b['speedup_vs_bf16']:.2f} | {b['hbm_floor_ms'] * 1e3:.1f} | "
                     f"{b['pct_hbm_floor']:.1f} | {b['gemm_floor_ms'] * 1e3:.1f} | {b['pct_floor']:.1f} | "
                     f"{c['ms'] * 1e3:.1f} | {c['speedup_vs_bf16']:.2f} | {b['rel_diff_vs_bf16']:.1e} |")
    return lines


def dense_lines(rows: list[dict]) -> list[str]:
    lines = ["## Dense projections: bf16 torch.matmul vs fp8_linear forms (us; x: the form fp8_linear picks)", "",
             "| shape (N x K) | tokens | bf16 | FP8 HBM floor | block w8a16 | block w8a8 | block scaled_mm | "
             "channel w8a16 | channel w8a8 | channel scaled_mm | picked speedup (block / channel) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = []
        for kind in ("block", "channel"):
            for form in FORMS:
                v = r[kind]["forms"].get(form, {})
                mark = "x " if form == r[kind]["picked"] else ""
                cells.append(f"{mark}{v['ms'] * 1e3:.1f}" if "ms" in v else "-")
        picked = " / ".join(f"{r[k]['forms'][r[k]['picked']]['speedup_vs_bf16']:.2f}"
                            if "ms" in r[k]["forms"].get(r[k]["picked"], {}) else "-" for k in ("block", "channel"))
        lines.append(f"| {r['shape']} ({r['N']} x {r['K']}) | {r['tokens']} | {r['bf16_ms'] * 1e3:.1f} | "
                     f"{r['block']['hbm_floor_ms'] * 1e3:.1f} | " + " | ".join(cells) + f" | {picked} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--sections", nargs="+", default=["moe", "dense"], choices=["moe", "dense", "dense_variants"])
    parser.add_argument("--moe-shapes", nargs="+", default=list(MOE_SHAPES), choices=list(MOE_SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=MOE_TOKENS, help="MoE token counts")
    parser.add_argument("--command", default=" ".join(sys.argv))
    parser.add_argument("--commit", default="", help="the commit benchmarked (default: git rev-parse HEAD)")
    args = parser.parse_args()
    dev = torch.cuda.get_device_name()
    timer = Timer()
    floors = {"copy_bw_GBps": copy_rate(timer) / 1e9, "bf16_gemm_TFLOPs": gemm_rate(timer) / 1e12,
              "fp8_gemm_TFLOPs": fp8_rate(timer) / 1e12}
    print(f"{dev}: copy {floors['copy_bw_GBps']:.0f} GB/s, bf16 {floors['bf16_gemm_TFLOPs']:.0f} TFLOP/s, "
          f"fp8 {floors['fp8_gemm_TFLOPs']:.0f} TFLOP/s, blockwise scaled_mm "
          f"{blockwise_scaled_mm_api(torch.device('cuda'))}", flush=True)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True).stdout.strip()
    res = {"device": dev, "machine": f"{dev}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs, "
           f"{platform.node()}", "command": args.command, "commit": commit or "see the results README",
           "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "floors": floors,
           "blockwise_scaled_mm_api": blockwise_scaled_mm_api(torch.device("cuda"))}
    if "moe" in args.sections:
        res["moe"] = bench_moe(timer, floors, args.moe_shapes, args.tokens)
    if "dense" in args.sections:
        res["dense"] = bench_dense(timer, floors, DENSE_TOKENS)
    if "dense_variants" in args.sections:
        res["dense_variants"] = bench_dense_variants(timer, floors)
    res["blockwise_probe_errors"] = dict(PROBE_ERRORS)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "fp8-" + dev.replace(" ", "_")
    (args.out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    f = res["floors"]
    lines = [f"# FP8 kernels on {dev}", "", f"Command: `{res['command']}`  ", f"Commit: {res['commit']}  ",
             f"Machine: {res['machine']}  ", f"torch {res['torch']}, triton {res['triton']}; {res['date']}", "",
             f"Floors measured in this run: copy {f['copy_bw_GBps']:.0f} GB/s (read+write), bf16 GEMM "
             f"{f['bf16_gemm_TFLOPs']:.0f} TFLOP/s, FP8 GEMM {f['fp8_gemm_TFLOPs']:.0f} TFLOP/s (8192^3). "
             f"Blockwise cuBLAS FP8: {res['blockwise_scaled_mm_api'] or 'not available'}.", ""]
    for key, fmt in (("moe", moe_lines), ("dense", dense_lines), ("dense_variants", dense_variant_lines)):
        if key in res:
            lines += fmt(res[key]) + [""]
    if res["blockwise_probe_errors"]:
        lines += ["Blockwise cuBLAS probe, refusals: " + "; ".join(f"{k}: {v}" for k, v in
                                                                  res["blockwise_probe_errors"].items()), ""]
    (args.out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print((args.out_dir / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()

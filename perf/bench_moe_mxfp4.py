"""Fused MoE at GPT-OSS-20B's expert shape (E 32, top-4, H = I = 2880), bf16 vs MXFP4 experts, against the floors.

All paths run GPT-OSS's MoE (biases, clamped SwiGLU) on the same experts: MXFP4 upcasts the
packed weights in registers (kernels.moe_mxfp4 over kernels.mxfp4_layout's form; "old MXFP4" is
the release-layout branch of kernels.moe_gemm), bf16 reads them dequantized. "MXFP4" is what the
engine runs at that token count; the two paths it picks between are columns too: the in-register
GEMM, and the prefill path that writes the experts out in bf16 and runs the bf16 kernel (kernels.
moe_mxfp4.DEQUANT_ROWS_PER_EXPERT is set from where they cross). Timing and floors are
bench_kernels.py's (CUDA-graph replays with L2 flushed; copy bandwidth, bf16 matmul rate).
HBM floor = distinct experts touched x expert bytes (bf16: 2 bytes a weight; MXFP4: 4.25
bits) / copy bandwidth; GEMM floor = 2 T k 3 H I / bf16 matmul rate; '% floor' is
max(floors) / time. Decode is weight-bound, so MXFP4 should approach a 3.76x shorter time there.
Where FlashInfer imports on a Hopper GPU, its SM90 CUTLASS MXFP4 x BF16 MoE (kernels.flashinfer_moe, the
same experts prepared as the engine prepares them) is a column too, timed the same way after its
autotuner has picked its tactics for each token count; its winning token ranges go to
kernels/configs/moe.json.
GPU:  PYTHONPATH=backend_src:<dir holding laminar_kernels> python perf/bench_moe_mxfp4.py --out-dir perf/results
CPU (interpreter, a tiny shape; checks the script runs): TRITON_INTERPRET=1 ... --tiny
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from bench_kernels import measure_floors
from kernel_timing import Timer, rel_diff
from moe_bench_util import mxfp4_weights

import laminar_kernels as K
from laminar.ops import torch_ops as R
from laminar_kernels import flashinfer_moe
from laminar_kernels.attention_libs import imported
from laminar_kernels.moe_mxfp4 import mxfp4_gemm_config
from laminar_kernels.mxfp4_layout import to_kernel_layout

TOKENS = [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
SHAPE = dict(experts=32, top_k=4, hidden=2880, inter=2880)
TINY = dict(experts=8, top_k=4, hidden=64, inter=64)
SWIGLU = (1.702, 7.0)
MXFP4_BITS = 4.25
MXFP4_RUNS = ("mxfp4", "mxfp4_gemm", "mxfp4_dequant", "mxfp4_old")


def experts(shape: dict, device: torch.device, gen: torch.Generator) -> dict:
    """MXFP4 experts near std 0.02 (the dummy loader's), their bf16 dequantization, and bf16 biases."""
    e, h, i = shape["experts"], shape["hidden"], shape["inter"]
    up, down = mxfp4_weights(e, 2 * i, h, gen, device), mxfp4_weights(e, h, i, gen, device)
    bias = lambda *s: (torch.randn(*s, generator=gen) * 0.1).to(device, torch.bfloat16)  # noqa: E731
    b13, b2 = bias(e, 2 * i), bias(e, h)
    return {"up": up, "down": down, "up_k": to_kernel_layout(*up), "down_k": to_kernel_layout(*down),
            "w13": R.dequantize_mxfp4(*up, torch.bfloat16), "w2": R.dequantize_mxfp4(*down, torch.bfloat16),
            "b13": b13, "b2": b2, "flashinfer": flashinfer_moe.prepare(*up, *down, b13, b2, SWIGLU, choice="flashinfer")}


def autotuned(fn):
    """fn, once run under FlashInfer's autotuner (which profiles its tactics for this token count and
    keeps the fastest for later calls), so that it is timed at its best, as our tuned tables are."""
    with imported("flashinfer").autotune(True):
        fn()
    return fn


def bench(shape: dict, tokens: list[int], timer: Timer | None, floors: dict | None, device: torch.device,
          skip_old: bool = False) -> list[dict]:
    """timer / floors None (the CPU dry run): outputs are computed and compared, nothing is timed."""
    gen = torch.Generator().manual_seed(0)
    w = experts(shape, device, gen)
    e, k, h, i = shape["experts"], shape["top_k"], shape["hidden"], shape["inter"]
    bytes_per_weight = {"bf16": 2.0, "flashinfer": MXFP4_BITS / 8, **dict.fromkeys(MXFP4_RUNS, MXFP4_BITS / 8)}
    rows = []
    for n_tok in tokens:
        x = torch.randn(n_tok, h, generator=gen).to(device, torch.bfloat16)
        weights, ids = R.route_topk(torch.randn(n_tok, e, generator=gen).to(device), k, True)
        runs = {
            "bf16": lambda: K.fused_moe(x, w["w13"], w["w2"], weights, ids, b13=w["b13"], b2=w["b2"], swiglu=SWIGLU),
            "mxfp4": lambda: K.fused_moe(x, w["up_k"][0], w["down_k"][0], weights, ids, b13=w["b13"], b2=w["b2"],
                                         w13_scales=w["up_k"][1], w2_scales=w["down_k"][1], swiglu=SWIGLU),
            "mxfp4_gemm": lambda: K.fused_moe(x, w["up_k"][0], w["down_k"][0], weights, ids, b13=w["b13"], b2=w["b2"],
                                              w13_scales=w["up_k"][1], w2_scales=w["down_k"][1], swiglu=SWIGLU,
                                              config=mxfp4_gemm_config(n_tok, k, e, h, i, x.dtype, device)),
            "mxfp4_dequant": lambda: K.fused_moe(x, w["up_k"][0], w["down_k"][0], weights, ids, b13=w["b13"],
                                                 b2=w["b2"], w13_scales=w["up_k"][1], w2_scales=w["down_k"][1],
                                                 swiglu=SWIGLU, config={"DEQUANT": True}),
            "mxfp4_old": lambda: K.fused_moe(x, w["up"][0], w["down"][0], weights, ids, b13=w["b13"], b2=w["b2"],
                                             w13_scales=w["up"][1], w2_scales=w["down"][1], swiglu=SWIGLU),
        }
        if skip_old:
            del runs["mxfp4_old"]
        if w["flashinfer"] is not None:
            runs["flashinfer"] = autotuned(lambda: flashinfer_moe.fused_moe(x, weights, ids, w["flashinfer"]))
        touched = int(torch.unique(ids).numel())
        row = {"tokens": n_tok, "experts_touched": touched,
               "rel_diff_mxfp4_vs_bf16": rel_diff(runs["mxfp4"](), runs["bf16"]()),
               "rel_diff_dequant_vs_bf16": rel_diff(runs["mxfp4_dequant"](), runs["bf16"]())}
        if "flashinfer" in runs:
            row["rel_diff_flashinfer_vs_bf16"] = rel_diff(runs["flashinfer"](), runs["bf16"]())
        for name, fn in runs.items():
            if timer is None:
                continue
            t, row[f"{name}_timed_as"] = timer.ms(fn)
            hbm = (touched * 3 * h * i * bytes_per_weight[name] + 2 * n_tok * h * 2) / (floors["copy_bw_GBps"] * 1e9)
            gemm = 2 * n_tok * k * 3 * h * i / (floors["bf16_gemm_TFLOPs"] * 1e12)
            row.update({f"{name}_ms": t, f"{name}_hbm_floor_ms": 1e3 * hbm, f"{name}_gemm_floor_ms": 1e3 * gemm,
                        f"{name}_pct_floor": 100 * 1e3 * max(hbm, gemm) / t})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(report: dict) -> str:
    f = lambda v, spec="{:.3f}": "-" if v is None else spec.format(v)  # noqa: E731
    lines = [f"# Fused MoE, GPT-OSS-20B experts: bf16 vs MXFP4 ({report['device']})", "",
             f"Command: `{report['command']}`", "", f"Shape: {report['shape']}; floors: {report['floors']}", "",
             "| tokens | experts | bf16 ms | bf16 % floor | old MXFP4 ms | old % floor | MXFP4 ms | MXFP4 HBM floor ms "
             "| MXFP4 % floor | bf16 / MXFP4 | old / MXFP4 | MXFP4 GEMM ms | MXFP4 write-out + bf16 ms "
             "| FlashInfer ms | FlashInfer % floor | FlashInfer / MXFP4 | GEMM floor ms | rel. diff | FlashInfer rel. diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ratio = lambda a: r[a] / r["mxfp4_ms"] if a in r and "mxfp4_ms" in r else None  # noqa: E731
        lines.append(
            f"| {r['tokens']} | {r['experts_touched']} | {f(r.get('bf16_ms'))} | {f(r.get('bf16_pct_floor'), '{:.0f}%')} "
            f"| {f(r.get('mxfp4_old_ms'))} | {f(r.get('mxfp4_old_pct_floor'), '{:.0f}%')} | {f(r.get('mxfp4_ms'))} | "
            f"{f(r.get('mxfp4_hbm_floor_ms'))} | {f(r.get('mxfp4_pct_floor'), '{:.0f}%')} | {f(ratio('bf16_ms'), '{:.2f}x')} "
            f"| {f(ratio('mxfp4_old_ms'), '{:.2f}x')} | {f(r.get('mxfp4_gemm_ms'))} | {f(r.get('mxfp4_dequant_ms'))} "
            f"| {f(r.get('flashinfer_ms'))} "
            f"| {f(r.get('flashinfer_pct_floor'), '{:.0f}%')} | {f(ratio('flashinfer_ms'), '{:.2f}x')} "
            f"| {f(r.get('bf16_gemm_floor_ms'))} | {r['rel_diff_mxfp4_vs_bf16']:.1e} "
            f"| {f(r.get('rel_diff_flashinfer_vs_bf16'), '{:.1e}')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="*")
    ap.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU (Triton interpreter): a dry run")
    ap.add_argument("--out-dir", default="perf/results")
    ap.add_argument("--skip-old", action="store_true", help="leave out the release-layout MXFP4 kernel")
    ap.add_argument("--tag", default="", help="appended to the output file names")
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    shape = TINY if args.tiny else SHAPE
    tokens = args.tokens or ([1, 13] if args.tiny else TOKENS)
    timer = Timer() if device.type == "cuda" else None
    floors = measure_floors(timer) if timer else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    report = {"command": "python " + " ".join(sys.argv), "device": name, "shape": shape, "floors": floors,
              "rows": bench(shape, tokens, timer, floors, device, args.skip_old)}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = name.split(" (")[0].replace(" ", "_") + (f"-{args.tag}" if args.tag else "")
    (out / f"kernels-moe-gpt-oss-{slug}.json").write_text(json.dumps(report, indent=1))
    (out / f"kernels-moe-gpt-oss-{slug}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

"""Fused MoE at GPT-OSS-20B's expert shape (E 32, top-4, H = I = 2880), bf16 vs MXFP4 experts, against the floors.

Both paths run GPT-OSS's MoE (biases, clamped SwiGLU) on the same experts: MXFP4 decodes
the packed weights in registers, bf16 reads them dequantized. HBM floor = distinct experts
touched x expert bytes (bf16: 2 bytes a weight; MXFP4: 4.25 bits) / copy bandwidth; GEMM
floor = 2 T k 3 H I / bf16 matmul rate; '% floor' is max(floors) / time. Decode is
weight-bound, so MXFP4 should approach a 3.76x shorter time there.
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
import triton

import laminar_kernels as K
from laminar.ops import torch_ops as R

TOKENS = [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
SHAPE = dict(experts=32, top_k=4, hidden=2880, inter=2880)
TINY = dict(experts=8, top_k=4, hidden=64, inter=64)
SWIGLU = (1.702, 7.0)
MXFP4_BITS = 4.25


def ms(fn, device: torch.device) -> float:
    if device.type != "cuda":
        fn()
        return float("nan")
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def graph_ms(fn, device: torch.device) -> float:
    """Replay time of a captured CUDA graph: the kernels' GPU time without Python launch overhead."""
    if device.type != "cuda":
        return float("nan")
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
    except Exception:  # recorded as missing, not fatal
        return float("nan")


def fastest(*times: float) -> float:
    measured = [t for t in times if t == t]
    return min(measured) if measured else float("nan")


def measure_floors(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"copy_bw_GBps": None, "bf16_gemm_TFLOPs": None}
    src = torch.randn(1 << 30, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 2 / (ms(lambda: dst.copy_(src), device) * 1e-3)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    rate = 2 * 8192**3 / (ms(lambda: a @ a, device) * 1e-3)
    return {"copy_bw_GBps": bw / 1e9, "bf16_gemm_TFLOPs": rate / 1e12}


def experts(shape: dict, device: torch.device, gen: torch.Generator) -> dict:
    """MXFP4 experts near std 0.02 (the dummy loader's), their bf16 dequantization, and bf16 biases."""
    e, h, i = shape["experts"], shape["hidden"], shape["inter"]

    def packed(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = torch.randint(0, 256, (e, rows, cols // 32, 16), dtype=torch.uint8, generator=gen)
        return blocks.to(device), torch.full((e, rows, cols // 32), 120, dtype=torch.uint8, device=device)

    up, down = packed(2 * i, h), packed(h, i)
    bias = lambda *s: (torch.randn(*s, generator=gen) * 0.1).to(device, torch.bfloat16)  # noqa: E731
    return {"up": up, "down": down, "w13": R.dequantize_mxfp4(*up, torch.bfloat16),
            "w2": R.dequantize_mxfp4(*down, torch.bfloat16), "b13": bias(e, 2 * i), "b2": bias(e, h)}


def bench(shape: dict, tokens: list[int], floors: dict, device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    w = experts(shape, device, gen)
    e, k, h, i = shape["experts"], shape["top_k"], shape["hidden"], shape["inter"]
    bytes_per_weight = {"bf16": 2.0, "mxfp4": MXFP4_BITS / 8}
    rows = []
    for n_tok in tokens:
        x = torch.randn(n_tok, h, generator=gen).to(device, torch.bfloat16)
        weights, ids = R.route_topk(torch.randn(n_tok, e, generator=gen).to(device), k, True)
        runs = {
            "bf16": lambda: K.fused_moe(x, w["w13"], w["w2"], weights, ids, b13=w["b13"], b2=w["b2"], swiglu=SWIGLU),
            "mxfp4": lambda: K.fused_moe(x, w["up"][0], w["down"][0], weights, ids, b13=w["b13"], b2=w["b2"],
                                         w13_scales=w["up"][1], w2_scales=w["down"][1], swiglu=SWIGLU),
        }
        outs = {name: fn().float() for name, fn in runs.items()}
        touched = int(torch.unique(ids).numel())
        row = {"tokens": n_tok, "experts_touched": touched,
               "rel_diff_mxfp4_vs_bf16": ((outs["mxfp4"] - outs["bf16"]).norm() / outs["bf16"].norm()).item()}
        for name, fn in runs.items():
            t, g = ms(fn, device), graph_ms(fn, device)
            row[f"{name}_ms"], row[f"{name}_graph_ms"] = t, g
            if floors["copy_bw_GBps"]:
                hbm = (touched * 3 * h * i * bytes_per_weight[name] + 2 * n_tok * h * 2) / (floors["copy_bw_GBps"] * 1e9) * 1e3
                gemm = 2 * n_tok * k * 3 * h * i / (floors["bf16_gemm_TFLOPs"] * 1e12) * 1e3
                row[f"{name}_hbm_floor_ms"], row[f"{name}_gemm_floor_ms"] = hbm, gemm
                row[f"{name}_pct_floor"] = 100 * max(hbm, gemm) / fastest(t, g)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(report: dict) -> str:
    f = lambda v, spec="{:.3f}": "-" if v is None or v != v else spec.format(v)  # noqa: E731
    lines = [f"# Fused MoE, GPT-OSS-20B experts: bf16 vs MXFP4 ({report['device']})", "",
             f"Command: `{report['command']}`", "", f"Shape: {report['shape']}; floors: {report['floors']}", "",
             "| tokens | experts | bf16 ms (graph) | bf16 HBM floor ms | bf16 % floor | MXFP4 ms (graph) | "
             "MXFP4 HBM floor ms | MXFP4 % floor | bf16 / MXFP4 | GEMM floor ms | rel. diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        best = {n: fastest(r[f"{n}_ms"], r[f"{n}_graph_ms"]) for n in ("bf16", "mxfp4")}
        lines.append(
            f"| {r['tokens']} | {r['experts_touched']} | {f(r['bf16_ms'])} ({f(r['bf16_graph_ms'])}) | "
            f"{f(r.get('bf16_hbm_floor_ms'))} | {f(r.get('bf16_pct_floor'), '{:.0f}%')} | "
            f"{f(r['mxfp4_ms'])} ({f(r['mxfp4_graph_ms'])}) | {f(r.get('mxfp4_hbm_floor_ms'))} | "
            f"{f(r.get('mxfp4_pct_floor'), '{:.0f}%')} | {f(best['bf16'] / best['mxfp4'], '{:.2f}x')} | "
            f"{f(r.get('bf16_gemm_floor_ms'))} | {r['rel_diff_mxfp4_vs_bf16']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="*")
    ap.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU (Triton interpreter): a dry run")
    ap.add_argument("--out-dir", default="perf/results")
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    shape = TINY if args.tiny else SHAPE
    tokens = args.tokens or ([1, 13] if args.tiny else TOKENS)
    floors = measure_floors(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    report = {"command": "python " + " ".join(sys.argv), "device": name, "shape": shape, "floors": floors,
              "rows": bench(shape, tokens, floors, device)}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = name.split(" (")[0].replace(" ", "_")
    (out / f"kernels-moe-gpt-oss-{slug}.json").write_text(json.dumps(report, indent=1))
    (out / f"kernels-moe-gpt-oss-{slug}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()

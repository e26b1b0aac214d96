"""Kernel benchmark on one GPU: floors, then MoE and paged attention vs torch, in one run.

Floors are measured here (device-to-device copy bandwidth, 8192^3 bf16 matmul rate).
MoE: HBM floor = distinct experts touched x expert bytes / bandwidth, compute floor =
2 * T * k * 3 * H * I / GEMM rate; '% floor' is max(floors) / time. Attention: KV bytes
read / bandwidth (decode) and causal FLOPs / GEMM rate (prefill). Baselines run in the
same process: torch._grouped_mm for MoE, SDPA for attention.
Run: PYTHONPATH=backend_src:<dir holding laminar_kernels> python perf/bench_kernels.py --out-dir perf/results
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).parent))
from moe_bench_util import grouped_mm_moe, moe_inputs  # noqa: E402

import laminar_kernels as K  # noqa: E402
from laminar.ops.metadata import AttentionMetadata  # noqa: E402
from laminar_kernels.attention_decode import decode_attention  # noqa: E402
from laminar_kernels.attention_prefill import prefill_attention  # noqa: E402

MOE_TOKENS = [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
E, TOP_K, H, I = 128, 8, 2048, 768
HQ, HK, D, PAGE = 32, 4, 128, 16


def ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def graph_ms(fn) -> float:
    """Replay time of a captured CUDA graph: the op's GPU time without Python launch overhead."""
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
    except Exception:
        return float("nan")


def measure_floors() -> dict:
    n = 1 << 30  # 2 GiB of bf16 each way
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    bw = 2 * n * 2 / (ms(lambda: dst.copy_(src)) * 1e-3)
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    flops = 2 * 8192**3 / (ms(lambda: a @ b) * 1e-3)
    return {"copy_bw_GBps": bw / 1e9, "bf16_gemm_TFLOPs": flops / 1e12}


def bench_moe(floors: dict) -> list[dict]:
    rows = []
    bw, rate = floors["copy_bw_GBps"] * 1e9, floors["bf16_gemm_TFLOPs"] * 1e12
    expert_bytes = 3 * H * I * 2
    for n_tok in MOE_TOKENS:
        x, w13, w2, weights, ids = moe_inputs(n_tok, E, TOP_K, H, I)
        w13_t, w2_t = w13.transpose(1, 2), w2.transpose(1, 2)
        ours = ms(lambda: K.fused_moe(x, w13, w2, weights, ids))
        ref = K.fused_moe(x, w13, w2, weights, ids)
        try:
            base_out = grouped_mm_moe(x, w13_t, w2_t, weights, ids)
            base = ms(lambda: grouped_mm_moe(x, w13_t, w2_t, weights, ids))
            agree = ((ref.float() - base_out.float()).norm() / base_out.float().norm()).item()
        except Exception as exc:  # recorded, not fatal: the table says why
            base, agree = float("nan"), repr(exc)[:120]
        graph = graph_ms(lambda: K.fused_moe(x, w13, w2, weights, ids))
        touched = int(torch.unique(ids).numel())
        hbm = (touched * expert_bytes + 2 * n_tok * H * 2) / bw * 1e3
        comp = 2 * n_tok * TOP_K * 3 * H * I / rate * 1e3
        floor, bound = (hbm, "hbm") if hbm >= comp else (comp, "gemm")
        rows.append({"tokens": n_tok, "ms": ours, "graph_ms": graph, "grouped_mm_ms": base, "experts_touched": touched,
                     "hbm_floor_ms": hbm, "gemm_floor_ms": comp, "bound": bound,
                     "pct_floor": 100 * floor / ours, "pct_hbm": 100 * hbm / ours, "pct_gemm": 100 * comp / ours,
                     "speedup_vs_grouped_mm": base / ours, "rel_diff_vs_grouped_mm": agree})
        r = rows[-1]
        print(f"moe T={n_tok:5d} {ours * 1e3:9.1f} us (graph {graph * 1e3:.1f})  {r['pct_floor']:5.1f}% of {bound} floor  "
              f"grouped_mm {base * 1e3:9.1f} us  x{r['speedup_vs_grouped_mm']:.2f}", flush=True)
        del x, w13, w2
    return rows


def paged_cache(n_seqs: int, ctx: int, q_len: int):
    """Contiguous per-sequence KV (for SDPA) plus shuffled block tables over the same storage."""
    blocks_per_seq = triton.cdiv(ctx, PAGE)
    n_blocks = n_seqs * blocks_per_seq
    k_cache = torch.randn(n_blocks, PAGE, HK, D, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(n_blocks, device="cuda").view(n_seqs, blocks_per_seq).to(torch.int32)
    meta = AttentionMetadata(
        query_start_loc=torch.arange(n_seqs + 1, device="cuda", dtype=torch.int32) * q_len,
        seq_lens=torch.full((n_seqs,), ctx, device="cuda", dtype=torch.int32), block_tables=perm,
        slot_mapping=torch.zeros(n_seqs * q_len, device="cuda", dtype=torch.int64),
        max_query_len=q_len, max_seq_len=ctx)
    return k_cache, v_cache, meta


def sdpa_views(k_cache, v_cache, n_seqs: int, ctx: int):
    """SDPA reads the same storage as [B, Hk, ctx, D] views (identity block order); no copy is timed."""
    k = k_cache.view(n_seqs, -1, HK, D)[:, :ctx].transpose(1, 2)
    v = v_cache.view(n_seqs, -1, HK, D)[:, :ctx].transpose(1, 2)
    return k, v


def bench_decode(floors: dict) -> list[dict]:
    rows = []
    bw = floors["copy_bw_GBps"] * 1e9
    for n_seqs in (1, 16, 64, 256):
        for ctx in (1024, 4096, 16384):
            k_cache, v_cache, meta = paged_cache(n_seqs, ctx, 1)
            q = torch.randn(n_seqs, HQ, D, device="cuda", dtype=torch.bfloat16)
            ours = ms(lambda: K.paged_attention(q, k_cache, v_cache, meta, D**-0.5))
            k, v = sdpa_views(k_cache, v_cache, n_seqs, ctx)
            qs = q.view(n_seqs, HQ, 1, D)
            try:
                base = ms(lambda: F.scaled_dot_product_attention(qs, k, v, scale=D**-0.5, enable_gqa=True))
            except Exception:
                base = float("nan")
            floor = 2 * n_seqs * ctx * HK * D * 2 / bw * 1e3
            graph = graph_ms(lambda: K.paged_attention(q, k_cache, v_cache, meta, D**-0.5))
            rows.append({"batch": n_seqs, "ctx": ctx, "ms": ours, "graph_ms": graph, "sdpa_ms": base, "hbm_floor_ms": floor,
                         "pct_floor": 100 * floor / ours, "speedup_vs_sdpa": base / ours})
            print(f"decode B={n_seqs:3d} ctx={ctx:5d} {ours * 1e3:8.1f} us (graph {graph * 1e3:.1f}) "
                  f"{rows[-1]['pct_floor']:5.1f}% hbm "
                  f"sdpa {base * 1e3:8.1f} us x{base / ours:.2f}", flush=True)
            del k_cache, v_cache
    return rows


def decode_variants() -> list[dict]:
    """Split counts at mid-size points, to check the split heuristic (default tiles)."""
    res = []
    for n_seqs, ctx in ((16, 4096), (64, 1024), (64, 4096)):
        k_cache, v_cache, meta = paged_cache(n_seqs, ctx, 1)
        q = torch.randn(n_seqs, HQ, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        for splits in (None, 1, 2, 4, 8, 16):
            fn = lambda: decode_attention(q, k_cache, v_cache, meta, 0.1, out, n_splits=splits)  # noqa: E731
            res.append({"batch": n_seqs, "ctx": ctx, "splits": splits, "ms": ms(fn), "graph_ms": graph_ms(fn)})
            print("decode variant", res[-1], flush=True)
    return res


def bench_prefill(floors: dict) -> list[dict]:
    rows = []
    rate = floors["bf16_gemm_TFLOPs"] * 1e12
    for ctx in (1024, 4096, 16384):
        k_cache, v_cache, meta = paged_cache(1, ctx, ctx)
        q = torch.randn(ctx, HQ, D, device="cuda", dtype=torch.bfloat16)
        ours = ms(lambda: K.paged_attention(q, k_cache, v_cache, meta, D**-0.5))
        k, v = sdpa_views(k_cache, v_cache, 1, ctx)
        qs = q.view(1, ctx, HQ, D).transpose(1, 2)
        try:
            base = ms(lambda: F.scaled_dot_product_attention(qs, k, v, is_causal=True, scale=D**-0.5, enable_gqa=True))
        except Exception:
            base = float("nan")
        floor = 4 * HQ * D * ctx * ctx / 2 / rate * 1e3
        variants = {}
        for bm, bn, w, s in ((128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3), (64, 128, 8, 2)):
            out = torch.empty_like(q)
            try:
                variants[f"{bm}x{bn}w{w}s{s}"] = ms(lambda: prefill_attention(
                    q, k_cache, v_cache, meta, 0.1, out, block_m=bm, block_n=bn, num_warps=w, num_stages=s))
            except Exception:
                variants[f"{bm}x{bn}w{w}s{s}"] = float("nan")
        rows.append({"prompt": ctx, "ms": ours, "sdpa_ms": base, "gemm_floor_ms": floor,
                     "pct_floor": 100 * floor / ours, "speedup_vs_sdpa": base / ours, "variants_ms": variants})
        print(f"prefill {ctx:5d} {ours:8.3f} ms {rows[-1]['pct_floor']:5.1f}% gemm  sdpa {base:8.3f} ms "
              f"x{base / ours:.2f}  variants {variants}", flush=True)
    return rows


def write_markdown(path: Path, res: dict) -> None:
    f = res["floors"]
    lines = [f"# Kernel benchmark on {res['device']}", "",
             f"Command: `{res['command']}`  ", f"Machine: {res['machine']}  ",
             f"torch {res['torch']}, triton {res['triton']}; {res['date']}", "",
             f"Floors measured in this run: copy {f['copy_bw_GBps']:.0f} GB/s (read+write), "
             f"bf16 GEMM {f['bf16_gemm_TFLOPs']:.0f} TFLOP/s (8192^3).", "",
             "## Fused MoE, Qwen3-30B-A3B (E=128, top-8, H=2048, I=768), uniform random routing", "",
             "| tokens | experts touched | ours (us) | ours, CUDA graph (us) | HBM floor (us) | GEMM floor (us) | % of floor (bound) | torch._grouped_mm (us) | speedup |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["moe"]:
        lines.append(f"| {r['tokens']} | {r['experts_touched']} | {r['ms'] * 1e3:.1f} | {r['graph_ms'] * 1e3:.1f} | "
                     f"{r['hbm_floor_ms'] * 1e3:.1f} | "
                     f"{r['gemm_floor_ms'] * 1e3:.1f} | {r['pct_floor']:.1f} ({r['bound']}) | "
                     f"{r['grouped_mm_ms'] * 1e3:.1f} | {r['speedup_vs_grouped_mm']:.2f} |")
    lines += ["", "## Paged decode attention (32 q heads, 4 kv heads, D=128, block 16)", "",
              "| batch | context | ours (us) | ours, CUDA graph (us) | KV-read floor (us) | % of HBM floor | SDPA (us) | speedup |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["decode"]:
        lines.append(f"| {r['batch']} | {r['ctx']} | {r['ms'] * 1e3:.1f} | {r['graph_ms'] * 1e3:.1f} | "
                     f"{r['hbm_floor_ms'] * 1e3:.1f} | "
                     f"{r['pct_floor']:.1f} | {r['sdpa_ms'] * 1e3:.1f} | {r['speedup_vs_sdpa']:.2f} |")
    lines += ["", "## Paged prefill attention (one causal prompt, same heads)", "",
              "| prompt | ours (ms) | causal GEMM floor (ms) | % of floor | SDPA (ms) | speedup |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in res["prefill"]:
        lines.append(f"| {r['prompt']} | {r['ms']:.3f} | {r['gemm_floor_ms']:.3f} | {r['pct_floor']:.1f} | "
                     f"{r['sdpa_ms']:.3f} | {r['speedup_vs_sdpa']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--command", default=" ".join(sys.argv))
    args = parser.parse_args()
    dev = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    floors = measure_floors()
    print(f"{dev}: copy {floors['copy_bw_GBps']:.0f} GB/s, bf16 GEMM {floors['bf16_gemm_TFLOPs']:.0f} TFLOP/s", flush=True)
    res = {"device": dev, "machine": f"{dev}, {props.multi_processor_count} SMs, {platform.node()}",
           "command": args.command, "torch": torch.__version__, "triton": triton.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "floors": floors}
    res["moe"] = bench_moe(floors)
    res["decode"] = bench_decode(floors)
    res["decode_variants_b64_4k"] = decode_variants()
    res["prefill"] = bench_prefill(floors)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "kernels-" + dev.replace(" ", "_")
    (args.out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(args.out_dir / f"{stem}.md", res)
    print((args.out_dir / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()

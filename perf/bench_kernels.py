"""Kernel benchmark on one GPU: floors, then MoE and paged attention against their peers, in one run.

Floors are measured here (device-to-device copy bandwidth, 8192^3 bf16 matmul rate).
MoE: HBM floor = distinct experts touched x expert bytes / bandwidth, compute floor =
2 * T * k * 3 * H * I / GEMM rate; '% floor' is max(floors) / time; baselines are
torch._grouped_mm and vLLM's tuned fused_moe kernel (perf/vllm_fused_moe.py). Attention:
KV bytes read / bandwidth (decode) and causal FLOPs / GEMM rate (prefill); the baselines are
SDPA's fastest backend over the same KV stored contiguously and, where installed, FlashInfer's
fastest paged kernel over the same paged cache (perf/flashinfer_attention.py), plus a column per
attention library as the engine calls it (FlashInfer, FlashAttention-4, cuDNN paged SDPA:
perf/attention_libraries.py, timed eagerly). The sinks section runs GPT-OSS's attention (sinks,
128-token windows) against those libraries that support it. Every other time is the median of
CUDA-graph replays with L2 flushed before each (perf/kernel_timing.py).
Run: PYTHONPATH=backend_src:<dir holding laminar_kernels> python perf/bench_kernels.py --out-dir perf/results
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import attention_libraries
import flashinfer_attention
import torch
import torch.nn.functional as F
import triton
from kernel_timing import Timer, rel_diff
from moe_bench_util import grouped_mm_moe, moe_inputs
from torch.nn.attention import SDPBackend, sdpa_kernel

import laminar_kernels as K
from laminar.ops.metadata import AttentionMetadata
from laminar_kernels.attention_decode import decode_attention
from laminar_kernels.attention_prefill import prefill_attention

MOE_TOKENS = [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
E, TOP_K, H, I = 128, 8, 2048, 768  # noqa: E741  (the MoE literature's names)
HQ, HK, D, PAGE = 32, 4, 128, 16
SCALE = D**-0.5
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION}
DECODE_SHAPES = [(1, 1024), (1, 4096), (1, 16384), (1, 32768), (4, 32768), (8, 32768), (16, 1024), (16, 4096),
                 (16, 16384), (64, 1024), (64, 2048), (64, 4096), (64, 16384), (256, 1024), (256, 4096)]
PREFILL_PROMPTS = [[1024], [4096], [8192], [16384], [4096, 2048, 1024, 512, 300, 128, 64]]
FLASHINFER_VARIANTS = True  # --no-flashinfer-variants: only the engine's FlashInfer path (a library column)
OURS = {"prefill": "triton", "decode": "triton", "sinks": "triton"}  # our Triton kernels, whatever is installed
SINK_HQ, SINK_HK, SINK_D, SINK_WINDOW = 64, 8, 64, 128  # GPT-OSS-20B's attention
SINK_SHAPES = [("prefill", 1, 1024), ("prefill", 1, 4096), ("prefill", 1, 8192), ("prefill", 1, 16384),
               ("decode", 1, 4096), ("decode", 64, 2048), ("decode", 64, 4096), ("decode", 256, 1024),
               ("decode", 8, 32768)]


def copy_rate(timer: Timer, n: int = 1 << 30) -> float:
    """Device-to-device copy of n bf16 elements: bytes read plus written per second.

    Eager: captured in a graph, the copy becomes a memcpy node that the copy engines serve,
    about 20% slower than the SM copy kernel that eager launches and our kernels' loads see.
    """
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return 2 * n * 2 / (timer.ms(lambda: dst.copy_(src), capture=False)[0] * 1e-3)


def gemm_rate(timer: Timer, n: int = 8192) -> float:
    """bf16 n^3 matrix product on random data, FLOP/s."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n**3 / (timer.ms(lambda: a @ b)[0] * 1e-3)


def measure_floors(timer: Timer) -> dict:
    return {"copy_bw_GBps": copy_rate(timer) / 1e9, "bf16_gemm_TFLOPs": gemm_rate(timer) / 1e12}


def bench_moe(timer: Timer, floors: dict) -> list[dict]:
    from vllm_fused_moe import vllm_fused_moe

    rows = []
    bw, rate = floors["copy_bw_GBps"] * 1e9, floors["bf16_gemm_TFLOPs"] * 1e12
    expert_bytes = 3 * H * I * 2
    for n_tok in MOE_TOKENS:
        x, w13, w2, weights, ids = moe_inputs(n_tok, E, TOP_K, H, I)
        w13_t, w2_t = w13.transpose(1, 2), w2.transpose(1, 2)
        ours, _ = timer.ms(lambda: K.fused_moe(x, w13, w2, weights, ids))
        ref = K.fused_moe(x, w13, w2, weights, ids)
        base, _ = timer.ms(lambda: grouped_mm_moe(x, w13_t, w2_t, weights, ids))
        vllm, _ = timer.ms(lambda: vllm_fused_moe(x, w13, w2, weights, ids))
        touched = int(torch.unique(ids).numel())
        hbm = (touched * expert_bytes + 2 * n_tok * H * 2) / bw * 1e3
        comp = 2 * n_tok * TOP_K * 3 * H * I / rate * 1e3
        floor, bound = (hbm, "hbm") if hbm >= comp else (comp, "gemm")
        rows.append({"tokens": n_tok, "ms": ours, "grouped_mm_ms": base, "vllm_ms": vllm, "experts_touched": touched,
                     "hbm_floor_ms": hbm, "gemm_floor_ms": comp, "bound": bound, "pct_floor": 100 * floor / ours,
                     "speedup_vs_grouped_mm": base / ours, "speedup_vs_vllm": vllm / ours,
                     "rel_diff_vs_grouped_mm": rel_diff(ref, grouped_mm_moe(x, w13_t, w2_t, weights, ids)),
                     "rel_diff_vs_vllm": rel_diff(ref, vllm_fused_moe(x, w13, w2, weights, ids))})
        r = rows[-1]
        print(f"moe T={n_tok:5d} {ours * 1e3:8.1f} us {r['pct_floor']:5.1f}% of {bound} floor  "
              f"grouped_mm x{r['speedup_vs_grouped_mm']:.2f}  vllm {vllm * 1e3:8.1f} us x{r['speedup_vs_vllm']:.2f}",
              flush=True)
    return rows


def paged_cache(ctx_lens: list[int], q_lens: list[int], page: int = PAGE, hk: int = HK, d: int = D):
    """A paged KV cache whose block tables list randomly placed pages, plus each sequence's
    keys and values gathered into contiguous [Hk, ctx, D] tensors for SDPA (not timed)."""
    pages = [triton.cdiv(c, page) for c in ctx_lens]
    k_cache = torch.randn(sum(pages), page, hk, d, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(sum(pages), device="cuda").to(torch.int32)
    tables = torch.zeros(len(ctx_lens), max(pages), device="cuda", dtype=torch.int32)
    views, first = [], 0
    for b, (n, ctx) in enumerate(zip(pages, ctx_lens)):
        ids = perm[first:first + n]
        tables[b, :n] = ids
        first += n
        views.append(tuple(c[ids.long()].flatten(0, 1)[:ctx].transpose(0, 1).contiguous()
                           for c in (k_cache, v_cache)))
    qsl = torch.zeros(len(q_lens) + 1, device="cuda", dtype=torch.int32)
    qsl[1:] = torch.cumsum(torch.tensor(q_lens, device="cuda"), 0)
    meta = AttentionMetadata(
        query_start_loc=qsl, seq_lens=torch.tensor(ctx_lens, device="cuda", dtype=torch.int32), block_tables=tables,
        slot_mapping=torch.zeros(sum(q_lens), device="cuda", dtype=torch.int64),
        max_query_len=max(q_lens), max_seq_len=max(ctx_lens))
    return k_cache, v_cache, meta, views


def sdpa_fns(q_views, kv_views, causal: bool) -> dict:
    """One way per SDPA backend to run every sequence (GQA by enable_gqa), for Timer.best."""
    def run(backend):
        def fn():
            with sdpa_kernel([backend]):
                return [F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=SCALE, enable_gqa=True)
                        for q, (k, v) in zip(q_views, kv_views)]
        return fn
    return {name: run(b) for name, b in SDPA_BACKENDS.items()}


def flashinfer_columns(timer: Timer, q, k_cache, v_cache, meta, ours_ms: float, ref: torch.Tensor,
                       causal: bool) -> dict:
    """Every FlashInfer variant timed over our paged cache; the fastest one's time and its error
    against the reference. Empty when FlashInfer is not installed or its variants are not asked for
    (each JIT-compiles a module of its own)."""
    if not FLASHINFER_VARIANTS:
        return {}
    fns = flashinfer_attention.variants(q, k_cache, v_cache, meta.query_start_loc, meta.seq_lens,
                                        meta.block_tables, SCALE, causal)
    if not fns:
        return {}
    times = {name: timer.ms(fn)[0] for name, fn in fns.items()}
    best = min(times, key=times.get)
    return {"flashinfer_ms": times[best], "flashinfer_variant": best, "flashinfer_all_ms": times,
            "speedup_vs_flashinfer": times[best] / ours_ms,
            "rel_diff_flashinfer_vs_ref": rel_diff(fns[best]().view_as(ref), ref)}


def flashinfer_note(r: dict) -> str:
    return (f"  flashinfer[{r['flashinfer_variant']}] {r['flashinfer_ms'] * 1e3:8.1f} us "
            f"x{r['speedup_vs_flashinfer']:.2f}" if "flashinfer_ms" in r else "")


def bench_decode(timer: Timer, floors: dict) -> list[dict]:
    rows = []
    bw = floors["copy_bw_GBps"] * 1e9
    for n_seqs, ctx in DECODE_SHAPES:
        k_cache, v_cache, meta, views = paged_cache([ctx] * n_seqs, [1] * n_seqs)
        q = torch.randn(n_seqs, HQ, D, device="cuda", dtype=torch.bfloat16)
        # ours: our Triton kernels only (each library has a column of its own)
        ours, _ = timer.ms(lambda: K.paged_attention(q, k_cache, v_cache, meta, SCALE, chosen=OURS))
        k = torch.stack([kv[0] for kv in views])
        v = torch.stack([kv[1] for kv in views])
        base, backend = timer.best(sdpa_fns([q.view(n_seqs, HQ, 1, D)], [(k, v)], causal=False))
        ref = F.scaled_dot_product_attention(q.view(n_seqs, HQ, 1, D), k, v, scale=SCALE, enable_gqa=True)
        floor = 2 * n_seqs * ctx * HK * D * 2 / bw * 1e3
        rows.append({"batch": n_seqs, "ctx": ctx, "ms": ours, "sdpa_ms": base, "sdpa_backend": backend,
                     "hbm_floor_ms": floor, "pct_floor": 100 * floor / ours, "speedup_vs_sdpa": base / ours,
                     "rel_diff_vs_sdpa": rel_diff(K.paged_attention(q, k_cache, v_cache, meta, SCALE, chosen=OURS),
                                                  ref.view(n_seqs, HQ, D))})
        r = rows[-1]
        r.update(flashinfer_columns(timer, q, k_cache, v_cache, meta, ours, ref.view(n_seqs, HQ, D), causal=False))
        r.update(attention_libraries.columns(timer, attention_libraries.runs(q, k_cache, v_cache, meta, SCALE), ours,
                                             ref.view(n_seqs, HQ, D)))
        print(f"decode B={n_seqs:3d} ctx={ctx:5d} {ours * 1e3:8.1f} us {r['pct_floor']:5.1f}% hbm  "
              f"sdpa[{backend}] {base * 1e3:8.1f} us x{r['speedup_vs_sdpa']:.2f}  diff {r['rel_diff_vs_sdpa']:.1e}"
              + flashinfer_note(r) + attention_libraries.note(r), flush=True)
    return rows


def bench_prefill(timer: Timer, floors: dict) -> list[dict]:
    rows = []
    rate = floors["bf16_gemm_TFLOPs"] * 1e12
    for prompts in PREFILL_PROMPTS:
        k_cache, v_cache, meta, views = paged_cache(prompts, prompts)
        q = torch.randn(sum(prompts), HQ, D, device="cuda", dtype=torch.bfloat16)
        q_views = [qs.transpose(0, 1).unsqueeze(0) for qs in q.split(prompts)]
        kv_views = [(k.unsqueeze(0), v.unsqueeze(0)) for k, v in views]
        ours, _ = timer.ms(lambda: K.paged_attention(q, k_cache, v_cache, meta, SCALE, chosen=OURS))
        base, backend = timer.best(sdpa_fns(q_views, kv_views, causal=True))
        ref = torch.cat([F.scaled_dot_product_attention(qv, k, v, is_causal=True, scale=SCALE, enable_gqa=True)
                         [0].transpose(0, 1) for qv, (k, v) in zip(q_views, kv_views)])
        flops = sum(4 * HQ * D * n * (n + 1) / 2 for n in prompts)
        rows.append({"prompts": prompts, "ms": ours, "sdpa_ms": base, "sdpa_backend": backend,
                     "tflops": flops / ours / 1e9, "sdpa_tflops": flops / base / 1e9,
                     "gemm_floor_ms": flops / rate * 1e3, "speedup_vs_sdpa": base / ours,
                     "rel_diff_vs_sdpa": rel_diff(K.paged_attention(q, k_cache, v_cache, meta, SCALE, chosen=OURS), ref)})
        r = rows[-1]
        r.update(flashinfer_columns(timer, q, k_cache, v_cache, meta, ours, ref, causal=True))
        r.update(attention_libraries.columns(timer, attention_libraries.runs(q, k_cache, v_cache, meta, SCALE), ours, ref))
        if "flashinfer_ms" in r:
            r["flashinfer_tflops"] = flops / r["flashinfer_ms"] / 1e9
        print(f"prefill {prompts} {ours:8.3f} ms {r['tflops']:5.0f} TFLOP/s  sdpa[{backend}] {base:8.3f} ms "
              f"{r['sdpa_tflops']:5.0f} TFLOP/s  x{r['speedup_vs_sdpa']:.2f}  diff {r['rel_diff_vs_sdpa']:.1e}"
              + flashinfer_note(r) + attention_libraries.note(r, 1.0), flush=True)
    return rows


def bench_sinks(timer: Timer, floors: dict) -> list[dict]:
    """GPT-OSS's attention (sinks on every layer, a 128-token window on every other one): ours
    against each library that supports it; errors are against ours (tested against the reference)."""
    rows = []
    scale = SINK_D**-0.5
    sinks = torch.randn(SINK_HQ, device="cuda", dtype=torch.float32)
    for kind, n_seqs, ctx in SINK_SHAPES:
        q_len = ctx if kind == "prefill" else 1
        k_cache, v_cache, meta, _ = paged_cache([ctx] * n_seqs, [q_len] * n_seqs, hk=SINK_HK, d=SINK_D)
        q = torch.randn(n_seqs * q_len, SINK_HQ, SINK_D, device="cuda", dtype=torch.bfloat16)
        for window in (0, SINK_WINDOW):
            def ours_fn():
                return K.paged_attention(q, k_cache, v_cache, meta, scale, sinks, window, chosen=OURS)
            ours, _ = timer.ms(ours_fn)
            rows.append({"kind": kind, "batch": n_seqs, "ctx": ctx, "window": window, "ms": ours})
            rows[-1].update(attention_libraries.columns(
                timer, attention_libraries.runs(q, k_cache, v_cache, meta, scale, sinks, window), ours, ours_fn()))
            print(f"sinks {kind} B={n_seqs} ctx={ctx} window={window} ours {ours * 1e3:8.1f} us"
                  + attention_libraries.note(rows[-1]), flush=True)
    return rows


def prefill_variants(timer: Timer) -> list[dict]:
    """Tile configs (BLOCK_M, BLOCK_N, warps, stages) of the prefill kernel at long prompts."""
    res = []
    configs = [(256, 64, 8, 2), (256, 64, 8, 3), (256, 32, 8, 3), (256, 64, 16, 2), (128, 128, 8, 2), (128, 64, 8, 2),
               (128, 128, 8, 3)]
    for ctx in (1024, 4096, 8192, 16384):
        k_cache, v_cache, meta, _ = paged_cache([ctx], [ctx])
        q = torch.randn(ctx, HQ, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        flops = 4 * HQ * D * ctx * (ctx + 1) / 2
        for cfg in configs:
            try:
                t, _ = timer.ms(lambda: prefill_attention(q, k_cache, v_cache, meta, SCALE, out, config=cfg))
            except Exception as exc:
                print("prefill variant", ctx, cfg, "failed:", repr(exc)[:100], flush=True)
                continue
            res.append({"prompt": ctx, "config": cfg, "ms": t, "tflops": flops / t / 1e9})
            print(f"prefill variant {ctx} {cfg} {t:.3f} ms {res[-1]['tflops']:.0f} TFLOP/s", flush=True)
    return res


def page_variants(timer: Timer) -> list[dict]:
    """Prefill attention of one 8k prompt against the KV block size (engine block_size): ours and
    FlashInfer's fastest, to price a cache layout with larger pages."""
    res = []
    ctx = 8192
    flops = 4 * HQ * D * ctx * (ctx + 1) / 2
    q = torch.randn(ctx, HQ, D, device="cuda", dtype=torch.bfloat16)
    for page in (16, 32, 64, 128, 256):
        k_cache, v_cache, meta, _ = paged_cache([ctx], [ctx], page)
        out = torch.empty_like(q)
        ours, _ = timer.ms(lambda: prefill_attention(q, k_cache, v_cache, meta, SCALE, out))
        fns = flashinfer_attention.variants(q, k_cache, v_cache, meta.query_start_loc, meta.seq_lens,
                                            meta.block_tables, SCALE, causal=True)
        theirs, variant = timer.best(fns) if fns else (float("nan"), "none")
        res.append({"page": page, "ms": ours, "tflops": flops / ours / 1e9, "flashinfer_ms": theirs,
                    "flashinfer_variant": variant, "flashinfer_tflops": flops / theirs / 1e9})
        print(f"page {page:3d}: ours {ours:.3f} ms {res[-1]['tflops']:.0f} TFLOP/s  flashinfer[{variant}] "
              f"{theirs:.3f} ms {res[-1]['flashinfer_tflops']:.0f} TFLOP/s", flush=True)
    return res


def decode_variants(timer: Timer) -> list[dict]:
    """Tile configs (BLOCK_N, warps, stages) and split counts of the decode kernel."""
    res = []
    configs = [(64, 4, 3), (64, 4, 4), (128, 4, 3), (128, 8, 3), (32, 4, 4), (64, 8, 4), (128, 4, 2)]
    for n_seqs, ctx in ((64, 2048), (64, 4096), (4, 32768), (1, 1024), (1, 4096), (16, 1024)):
        k_cache, v_cache, meta, _ = paged_cache([ctx] * n_seqs, [1] * n_seqs)
        q = torch.randn(n_seqs, HQ, D, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(q)
        floor_bytes = 2 * n_seqs * ctx * HK * D * 2
        for bn, w, s in configs:
            for splits in (None, 1, 2, 4, 8, 16, 32):
                try:
                    t, _ = timer.ms(lambda: decode_attention(q, k_cache, v_cache, meta, SCALE, out, n_splits=splits,
                                                             config=(bn, w, s)))
                except Exception as exc:
                    print("decode variant", (bn, w, s), "failed:", repr(exc)[:100], flush=True)
                    break
                res.append({"batch": n_seqs, "ctx": ctx, "config": (bn, w, s), "splits": splits, "ms": t,
                            "GBps": floor_bytes / t / 1e6})
            best = min((r for r in res if r["ctx"] == ctx and r["config"] == (bn, w, s)), key=lambda r: r["ms"],
                       default=None)
            if best:
                print(f"decode variant B={n_seqs} ctx={ctx} {(bn, w, s)} best splits={best['splits']} "
                      f"{best['ms'] * 1e3:.1f} us {best['GBps']:.0f} GB/s", flush=True)
    return res


def moe_lines(rows: list[dict]) -> list[str]:
    lines = ["## Fused MoE, Qwen3-30B-A3B (E=128, top-8, H=2048, I=768), uniform random routing", "",
             "| tokens | experts touched | ours (us) | HBM floor (us) | GEMM floor (us) | % of floor (bound) | "
             "torch._grouped_mm (us) | vLLM fused_moe (us) | vs grouped_mm | vs vLLM |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['experts_touched']} | {r['ms'] * 1e3:.1f} | "
                     f"{r['hbm_floor_ms'] * 1e3:.1f} | "
                     f"{r['gemm_floor_ms'] * 1e3:.1f} | {r['pct_floor']:.1f} ({r['bound']}) | "
                     f"{r['grouped_mm_ms'] * 1e3:.1f} | {r['vllm_ms'] * 1e3:.1f} | {r['speedup_vs_grouped_mm']:.2f} | "
                     f"{r['speedup_vs_vllm']:.2f} |")
    return lines


FI_HEAD = " FlashInfer best | variant | speedup vs FlashInfer | FlashInfer variants |"
FI_RULE = "---:|---|---:|---|"


def flashinfer_cells(r: dict, unit: float) -> str:
    """FlashInfer columns of one row in the table's unit (1e3: us, 1: ms); blank if it did not run."""
    if "flashinfer_ms" not in r:
        return " | | | |"
    every = ", ".join(f"{k} {v * unit:.3g}" for k, v in r["flashinfer_all_ms"].items())
    return (f" {r['flashinfer_ms'] * unit:.3g} | {r['flashinfer_variant']} | {r['speedup_vs_flashinfer']:.2f} | "
            f"{every} |")


def attention_table(title: str, head: str, rule: str, cells: Callable[[dict], str], unit: float,
                    rows: list[dict]) -> list[str]:
    """A markdown table of attention rows, with FlashInfer's variant columns and each attention
    library's column where any row has them."""
    fi = any("flashinfer_ms" in r for r in rows)
    lib_head, lib_rule, lib_cells = attention_libraries.head(rows)
    return [title, "", head + FI_HEAD * fi + lib_head, rule + FI_RULE * fi + lib_rule] + [
        cells(r) + flashinfer_cells(r, unit) * fi + lib_cells(r, unit) for r in rows]


def decode_lines(rows: list[dict]) -> list[str]:
    return attention_table(
        f"## Paged decode attention ({HQ} q heads, {HK} kv heads, D={D}, {PAGE}-token pages)",
        "| batch | context | ours (us) | KV-read floor (us) | % of HBM floor | SDPA best (us) | backend | speedup vs SDPA |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
        lambda r: (f"| {r['batch']} | {r['ctx']} | {r['ms'] * 1e3:.1f} | {r['hbm_floor_ms'] * 1e3:.1f} | "
                   f"{r['pct_floor']:.1f} | {r['sdpa_ms'] * 1e3:.1f} | {r['sdpa_backend']} | {r['speedup_vs_sdpa']:.2f} |"),
        1e3, rows)


def prefill_lines(rows: list[dict]) -> list[str]:
    return attention_table(
        "## Paged prefill attention (causal fresh prompts, same heads; SDPA runs one call per prompt)",
        "| prompts | ours (ms) | ours TFLOP/s | causal GEMM floor (ms) | SDPA best (ms) | backend | SDPA TFLOP/s | "
        "speedup vs SDPA |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
        lambda r: (f"| {'+'.join(map(str, r['prompts']))} | {r['ms']:.3f} | {r['tflops']:.0f} | "
                   f"{r['gemm_floor_ms']:.3f} | {r['sdpa_ms']:.3f} | {r['sdpa_backend']} | {r['sdpa_tflops']:.0f} | "
                   f"{r['speedup_vs_sdpa']:.2f} |"),
        1.0, rows)


def sinks_lines(rows: list[dict]) -> list[str]:
    return attention_table(
        f"## GPT-OSS attention: sinks, window 0 or {SINK_WINDOW} ({SINK_HQ} q heads, {SINK_HK} kv heads, D={SINK_D}; "
        "library errors against ours)",
        "| path | batch | context | window | ours (us) |", "|---|---:|---:|---:|---:|",
        lambda r: f"| {r['kind']} | {r['batch']} | {r['ctx']} | {r['window']} | {r['ms'] * 1e3:.1f} |", 1e3, rows)


def prefill_variant_lines(rows: list[dict]) -> list[str]:
    lines = ["## Prefill tile sweep (BLOCK_M, BLOCK_N, warps, stages)", "", "| prompt | config | ms | TFLOP/s |",
             "|---:|---|---:|---:|"]
    return lines + [f"| {r['prompt']} | {tuple(r['config'])} | {r['ms']:.3f} | {r['tflops']:.0f} |" for r in rows]


def decode_variant_lines(rows: list[dict]) -> list[str]:
    lines = ["## Decode tile and split sweep (BLOCK_N, warps, stages; splits None = heuristic)", "",
             "| batch | context | config | splits | us | GB/s |", "|---:|---:|---|---:|---:|---:|"]
    return lines + [f"| {r['batch']} | {r['ctx']} | {tuple(r['config'])} | {r['splits']} | {r['ms'] * 1e3:.1f} | "
                    f"{r['GBps']:.0f} |" for r in rows]


def page_variant_lines(rows: list[dict]) -> list[str]:
    lines = ["## Prefill of one 8k prompt by KV block size", "",
             "| page | ours (ms) | ours TFLOP/s | FlashInfer (ms) | variant | FlashInfer TFLOP/s |",
             "|---:|---:|---:|---:|---|---:|"]
    return lines + [f"| {r['page']} | {r['ms']:.3f} | {r['tflops']:.0f} | {r['flashinfer_ms']:.3f} | "
                    f"{r['flashinfer_variant']} | {r['flashinfer_tflops']:.0f} |" for r in rows]


def write_markdown(path: Path, res: dict) -> None:
    f = res["floors"]
    lines = [f"# Kernel benchmark on {res['device']}", "",
             f"Command: `{res['command']}`  ", f"Commit: {res.get('commit', 'unknown')}  ",
             f"Machine: {res['machine']}  ",
             f"torch {res['torch']}, triton {res['triton']}; {res['date']}  ",
             "Attention libraries: " + (", ".join(f"{k} {v}" for k, v in res.get("libraries", {}).items()) or "none"),
             "",
             f"Floors measured in this run: copy {f['copy_bw_GBps']:.0f} GB/s (read+write), "
             f"bf16 GEMM {f['bf16_gemm_TFLOPs']:.0f} TFLOP/s (8192^3). Times: medians of CUDA-graph replays, "
             "L2 flushed before each.", ""]
    for key, fmt in (("moe", moe_lines), ("decode", decode_lines), ("prefill", prefill_lines), ("sinks", sinks_lines),
                     ("prefill_variants", prefill_variant_lines), ("decode_variants", decode_variant_lines),
                     ("page_variants", page_variant_lines)):
        if key in res:
            lines += fmt(res[key]) + [""]
    path.write_text("\n".join(lines))


SECTIONS = {"moe": bench_moe, "decode": bench_decode, "prefill": bench_prefill, "sinks": bench_sinks}
VARIANTS = {"prefill_variants": prefill_variants, "decode_variants": decode_variants, "page_variants": page_variants}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS) + list(VARIANTS))
    parser.add_argument("--command", default=" ".join(sys.argv))
    parser.add_argument("--commit", default="", help="the commit measured (the device copy has no .git)")
    parser.add_argument("--flashinfer-variants", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    global FLASHINFER_VARIANTS
    FLASHINFER_VARIANTS = args.flashinfer_variants
    dev = torch.cuda.get_device_name()
    props = torch.cuda.get_device_properties(0)
    timer = Timer()
    floors = measure_floors(timer)
    print(f"{dev}: copy {floors['copy_bw_GBps']:.0f} GB/s, bf16 GEMM {floors['bf16_gemm_TFLOPs']:.0f} TFLOP/s",
          flush=True)
    res = {"device": dev, "machine": f"{dev}, {props.multi_processor_count} SMs, {platform.node()}",
           "command": args.command, "commit": args.commit or git_commit(), "torch": torch.__version__,
           "triton": triton.__version__, "libraries": attention_libraries.versions(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "floors": floors}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "kernels-" + dev.replace(" ", "_")
    if not set(SECTIONS) <= set(args.sections):
        stem += "-" + "-".join(args.sections)
    for name in args.sections:  # written after each section, so a run cut short keeps what it measured
        res[name] = SECTIONS[name](timer, floors) if name in SECTIONS else VARIANTS[name](timer)
        (args.out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
        write_markdown(args.out_dir / f"{stem}.md", res)
    print((args.out_dir / f"{stem}.md").read_text())


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()

"""Tunes the fused-MoE tile configs on the local GPU and writes kernels/configs/*.json.

For each token count, every BLOCK_M candidate gets one moe_align, then, for each activation
layout (kernels.moe_gemm: by pointer, or sorted through TMA for tall tiles; for FP8 experts W8A8
or W8A16, kernels.fp8), the up and down GEMMs are tuned independently over a small grid; the
(BLOCK_M, layout) with the best summed time wins. --mxfp4 / --fp8 tune MXFP4 experts (GPT-OSS) /
FP8 experts with 128x128 block scales (Qwen3-FP8) into their own tables;
--mxfp4-kernel-layout tunes MXFP4 experts in kernels.mxfp4_layout's form for kernels.moe_mxfp4. Tuning a subset of
--tokens updates those rows of an existing table and keeps the rest.
Every candidate is compiled first by a pool of processes (Triton's on-disk cache then serves
the timing process), and timed as bench_kernels.py times: CUDA-graph replays, L2 flushed.
Run: PYTHONPATH=backend_src:<dir holding laminar_kernels> python perf/tune_moe.py
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from kernel_timing import Timer
from moe_bench_util import fp8_weights, moe_inputs, mxfp4_weights

from laminar_kernels.fp8 import GROUP, quantize_rows
from laminar_kernels.fused_moe import _launch_gemm
from laminar_kernels.moe_align import max_padded_rows, moe_align
from laminar_kernels.moe_config import CONFIG_DIR, MXFP4_KERNEL_LAYOUT, config_file_name, device_name
from laminar_kernels.mxfp4_layout import to_kernel_layout

TOKENS = [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
SHAPES = {"qwen3-30b-a3b-tp1": (128, 8, 2048, 768), "qwen3-30b-a3b-tp2": (128, 8, 2048, 384),
          "gpt-oss-like": (32, 4, 2880, 2880), "gpt-oss-tp2": (32, 4, 2880, 1440)}


def _gemm(bn: int, bk: int, group: int, warps: int, stages: int, persistent: int = 0) -> dict:
    return {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps, "num_stages": stages,
            "PERSISTENT": persistent}


def mxfp4_kernel_candidates(block_m: int) -> list[dict]:
    """kernels.moe_mxfp4: weights on the MMA's M side (SWAP) for small token tiles, both sides at 64,
    activations there for tall tiles; BLOCK_K a multiple of the layout's 64-value tile."""
    tiles = [(bn, bk, w, s) for bn in (64, 128) for bk in (64, 128) for w, s in ((4, 3), (4, 4), (8, 3))]
    narrow = [(32, 128, 4, 3), (32, 64, 4, 4)]  # more programs for the few experts of a decode step
    swap = [dict(_gemm(bn, bk, 1 if block_m < 64 else 8, w, s), SWAP=True) for bn, bk, w, s in tiles + narrow
            ] if block_m <= 64 else []
    plain = [dict(_gemm(bn, bk, 8, w, s), SWAP=False) for bn, bk, w, s in tiles] if block_m >= 64 else []
    return swap + plain


def candidates(block_m: int, layout: dict, fmt: str = "", name: str = "up") -> list[dict]:
    """Small-M tiles stream weights (deep K, many stages); large-M tiles are square-ish for reuse, and in
    the TMA form may loop persistently over the tiles (PERSISTENT programs per SM)."""
    if fmt == MXFP4_KERNEL_LAYOUT:
        return mxfp4_kernel_candidates(block_m)
    if fmt == "FP8":
        return fp8_candidates(block_m, layout.get("A8", False), name)
    sorted_act = layout.get("TMA", False)
    if block_m <= 32:
        return [_gemm(bn, bk, 1, w, s) for bn in (64, 128) for bk in (64, 128, 256) for w, s in ((4, 3), (4, 4))
                if not (bk == 256 and s == 4)]
    tiles = [(64, 64, 8, 4, 4), (128, 64, 8, 4, 4), (64, 128, 4, 4, 3), (128, 64, 8, 8, 3), (128, 64, 8, 8, 4),
             (128, 128, 8, 8, 3), (256, 64, 8, 8, 3), (256, 64, 8, 8, 4)]
    persistent = [(128, 64, 8, 8, 4, 1), (256, 64, 8, 8, 3, 1), (128, 64, 8, 8, 3, 2)] if sorted_act else []
    return [_gemm(*c) for c in tiles + persistent]


def fp8_candidates(block_m: int, a8: bool, name: str) -> list[dict]:
    """FP8 tiles: W8A8 BLOCK_K divides 128 (one scale group per dot) and its up GEMM's BLOCK_N is a
    multiple of 128 (the epilogue quantizes whole activation groups); W8A16 at small M also tries K
    tiles over several weight blocks, for more bytes in flight per load (8-bit weights halve them)."""
    if block_m <= 32 and a8:
        tiles = [(bn, bk, 1, 4, s) for bn in (32, 64, 128) for bk in (64, 128) for s in (3, 4, 5)]
    elif block_m <= 32:
        tiles = [(bn, bk, 1, 4, s) for bn in (32, 64) for bk in (128, 256, 512) for s in (3, 4)
                 if not (bn == 64 and bk == 512 and s == 4)] + [(16, 256, 1, 4, 4), (16, 512, 1, 4, 3)]
    else:
        tiles = [(64, 128, 8, 4, 4), (128, 128, 8, 4, 3), (128, 128, 8, 8, 3), (128, 128, 8, 8, 4),
                 (128, 64, 8, 8, 4), (256, 128, 8, 8, 3), (256, 64, 8, 8, 4), (64, 128, 8, 4, 3)]
    return [_gemm(*t) for t in tiles if not (a8 and name == "up" and t[0] % GROUP)]


def block_m_options(n_tok: int, top_k: int, n_experts: int) -> list[int]:
    rows = n_tok * top_k / n_experts
    if rows <= 8:
        return [16, 32]
    if rows <= 64:
        return [16, 32, 64]
    return [64, 128]


@functools.lru_cache(maxsize=None)
def _problem(shape: tuple[int, int, int, int], n_tok: int, fmt: str):
    """Inputs of one (shape, token count): x, the two weights and their scales, routing weights and ids."""
    n_experts, top_k, hidden, inter = shape
    x, w13, w2, weights, ids = moe_inputs(n_tok, n_experts, top_k, hidden, inter)
    scales = {"up": None, "down": None}
    gen = torch.Generator().manual_seed(0)
    if fmt in ("MXFP4", MXFP4_KERNEL_LAYOUT):
        (w13, scales["up"]), (w2, scales["down"]) = (mxfp4_weights(n_experts, 2 * inter, hidden, gen),
                                                     mxfp4_weights(n_experts, hidden, inter, gen))
    if fmt == "FP8":
        (w13, scales["up"]), (w2, scales["down"]) = fp8_weights(w13), fp8_weights(w2)
    if fmt == MXFP4_KERNEL_LAYOUT:
        (w13, scales["up"]), (w2, scales["down"]) = to_kernel_layout(w13, scales["up"]), to_kernel_layout(w2, scales["down"])
    return x, w13, w2, weights.flatten().float(), ids, scales


def layouts(block_m: int, fmt: str) -> tuple[dict, ...]:
    """Row flags to try: dense weights take the TMA form (kernels.moe_gemm_tma) for tall tiles only (the
    prefill sizes where it was measured; its descriptors read dense weights only); FP8 weights W8A8 or W8A16."""
    if fmt == "FP8":
        return ({"A8": True}, {"A8": False})
    return ({}, {"TMA": True}) if block_m >= 64 and not fmt else ({},)


def _gemm_call(shape: tuple[int, int, int, int], n_tok: int, fmt: str, block_m: int, name: str, layout: dict):
    """A function that launches one GEMM of the MoE ('up' or 'down') with a given tile config."""
    n_experts, top_k, hidden, inter = shape
    x, w13, w2, flat_w, ids, scales = _problem(shape, n_tok, fmt)
    n_valid = n_tok * top_k
    align = moe_align(ids, n_experts, block_m)
    max_rows = max_padded_rows(n_valid, n_experts, block_m)
    sorted_act = layout.get("TMA", False)
    act = torch.randn(max_rows if sorted_act else n_valid, inter, device="cuda").to(torch.bfloat16)
    act_scales = None
    if layout.get("A8"):  # both GEMMs read FP8 activations with 128-group scales; the up GEMM writes them
        (x, x_scales), (act, act_scales) = quantize_rows(x), quantize_rows(act)
    out = torch.empty(n_valid, hidden, device="cuda", dtype=torch.bfloat16)
    a, b, c, a_div, gated, weighted = (x, w13, act, top_k, True, False) if name == "up" else \
        (act, w2, out, 1, False, True)
    a_scales, c_scales = (x_scales, act_scales) if name == "up" and act_scales is not None else (act_scales, None)
    return lambda cfg: _launch_gemm(a, b, c, flat_w, align, n_valid, max_rows, block_m, cfg, a_div, gated, weighted,
                                    sorted_act, scales[name], a_scales=a_scales, c_scales=c_scales)


def _compile(job: tuple) -> None:
    """Pool worker: one launch on a small problem of the same shape puts the kernel in Triton's cache."""
    shape, fmt, block_m, name, layout, cfg = job
    try:
        _gemm_call(shape, 64, fmt, block_m, name, layout)(cfg)
        torch.cuda.synchronize()
    except Exception:  # out of shared memory / registers: the timing pass skips it too
        pass


def precompile(shape: tuple[int, int, int, int], tokens: list[int], fmt: str, jobs: int) -> None:
    """Compiles every candidate of every BLOCK_M these token counts try, in parallel processes."""
    block_ms = sorted({m for n in tokens for m in block_m_options(n, shape[1], shape[0])})
    work = [(shape, fmt, m, name, layout, cfg) for m in block_ms for name in ("up", "down") for layout in layouts(m, fmt)
            for cfg in candidates(m, layout, fmt, name)]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_compile, work))


def bench(timer: Timer, fn) -> float:
    try:
        return timer.ms(fn)[0]
    except Exception:  # out of shared memory / registers for this tile
        return float("inf")


def tune_shape(shape: tuple[int, int, int, int], tokens: list[int], path: Path, fmt: str = "") -> dict:
    """Tunes each token count in turn, rewriting the table after each so a run cut short keeps its rows."""
    timer = Timer(reps=15, warmup=2)
    table = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
    for n_tok in tokens:
        best = (float("inf"), None)
        for block_m in block_m_options(n_tok, shape[1], shape[0]):
            for layout in layouts(block_m, fmt):
                picks, total = {}, 0.0
                for name in ("up", "down"):
                    call = _gemm_call(shape, n_tok, fmt, block_m, name, layout)
                    timed = [(bench(timer, lambda cfg=cfg: call(cfg)), cfg)
                             for cfg in candidates(block_m, layout, fmt, name)]
                    for t, cfg in timed:
                        print(f"    T={n_tok} BLOCK_M={block_m} {layout} {name}: {t * 1e3:8.1f} us {cfg}", flush=True)
                    t, picks[name] = min(timed, key=lambda tc: tc[0])
                    total += t
                if layout.get("A8"):  # the W8A8 form also quantizes x: one more pass over the tokens
                    total += bench(timer, lambda: quantize_rows(_problem(shape, n_tok, fmt)[0]))
                print(f"  T={n_tok} BLOCK_M={block_m} {layout}: {total * 1e3:8.1f} us", flush=True)
                if total < best[0]:
                    best = (total, {"BLOCK_M": block_m, **layout, **picks})
        if best[1] is None:  # nothing compiled or ran: keep the table's row
            print(f"  T={n_tok:5d}: no candidate ran; row kept", flush=True)
            continue
        table[n_tok] = best[1]
        path.write_text(json.dumps({str(k): table[k] for k in sorted(table)}, indent=1) + "\n")
        print(f"  T={n_tok:5d}: {best[0] * 1e3:8.1f} us  {best[1]}", flush=True)
        _problem.cache_clear()
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--out-dir", type=Path, default=CONFIG_DIR)
    parser.add_argument("--mxfp4", action="store_true", help="MXFP4 experts (their own tables)")
    parser.add_argument("--fp8", action="store_true", help="FP8 experts with 128x128 block scales (their own tables)")
    parser.add_argument("--mxfp4-kernel-layout", action="store_true",
                        help="MXFP4 experts in kernels.mxfp4_layout's form (kernels.moe_mxfp4; tables of their own)")
    parser.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1), help="compiling processes")
    args = parser.parse_args()
    dev = device_name(torch.device("cuda"))
    fmt = MXFP4_KERNEL_LAYOUT if args.mxfp4_kernel_layout else "MXFP4" if args.mxfp4 else "FP8" if args.fp8 else ""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.shapes:
        shape = SHAPES[name]
        start = time.time()
        print(f"{name}: E={shape[0]} top{shape[1]} H={shape[2]} I={shape[3]} on {dev}", flush=True)
        precompile(shape, args.tokens, fmt, args.jobs)
        print(f"  compiled in {time.time() - start:.0f} s", flush=True)
        path = args.out_dir / config_file_name(shape[0], shape[2], shape[3], dev, fmt)
        tune_shape(shape, args.tokens, path, fmt)
        print(f"  wrote {path} in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""Tunes the fused-MoE tile configs on the local GPU and writes kernels/configs/*.json.

For each token count, every BLOCK_M candidate gets one moe_align, then, for each activation
layout (kernels.moe_gemm: by pointer, or sorted through TMA for tall tiles), the up and down
GEMMs are tuned independently over a small grid; the (BLOCK_M, layout) with the best summed
time wins. --mxfp4 tunes MXFP4 experts (GPT-OSS) into their own tables; --mxfp4-kernel-layout
tunes them in kernels.mxfp4_layout's form for kernels.moe_mxfp4 (tables tagged moe_mxfp4.FORM). Tuning a subset of
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
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from kernel_timing import Timer  # noqa: E402
from moe_bench_util import moe_inputs, mxfp4_weights  # noqa: E402

from laminar_kernels.fused_moe import _launch_gemm  # noqa: E402
from laminar_kernels.moe_align import max_padded_rows, moe_align  # noqa: E402
from laminar_kernels.moe_config import CONFIG_DIR, config_file_name, device_name  # noqa: E402
from laminar_kernels.moe_mxfp4 import FORM  # noqa: E402
from laminar_kernels.mxfp4_layout import to_kernel_layout  # noqa: E402

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


def candidates(block_m: int, sorted_act: bool, mxfp4: bool | str = False) -> list[dict]:
    """Small-M tiles stream weights (deep K, many stages); large-M tiles are square-ish for reuse, and in
    the TMA form may loop persistently over the tiles (PERSISTENT programs per SM)."""
    if mxfp4 == FORM:
        return mxfp4_kernel_candidates(block_m)
    if block_m <= 32:
        return [_gemm(bn, bk, 1, w, s) for bn in (64, 128) for bk in (64, 128, 256) for w, s in ((4, 3), (4, 4))
                if not (bk == 256 and s == 4)]
    tiles = [(64, 64, 8, 4, 4), (128, 64, 8, 4, 4), (64, 128, 4, 4, 3), (128, 64, 8, 8, 3), (128, 64, 8, 8, 4),
             (128, 128, 8, 8, 3), (256, 64, 8, 8, 3), (256, 64, 8, 8, 4)]
    persistent = [(128, 64, 8, 8, 4, 1), (256, 64, 8, 8, 3, 1), (128, 64, 8, 8, 3, 2)] if sorted_act else []
    return [_gemm(*c) for c in tiles + persistent]


def block_m_options(n_tok: int, top_k: int, n_experts: int) -> list[int]:
    rows = n_tok * top_k / n_experts
    if rows <= 8:
        return [16, 32]
    if rows <= 64:
        return [16, 32, 64]
    return [64, 128]


@functools.lru_cache(maxsize=None)
def _problem(shape: tuple[int, int, int, int], n_tok: int, mxfp4: bool | str):
    """Inputs of one (shape, token count): x, the two weights and their scales, routing weights and ids
    (mxfp4 == FORM: MXFP4 weights in kernels.mxfp4_layout's form)."""
    n_experts, top_k, hidden, inter = shape
    x, w13, w2, weights, ids = moe_inputs(n_tok, n_experts, top_k, hidden, inter)
    scales = {"up": None, "down": None}
    if mxfp4:
        gen = torch.Generator().manual_seed(0)
        (w13, scales["up"]), (w2, scales["down"]) = (mxfp4_weights(n_experts, 2 * inter, hidden, gen),
                                                     mxfp4_weights(n_experts, hidden, inter, gen))
    if mxfp4 == FORM:
        (w13, scales["up"]), (w2, scales["down"]) = to_kernel_layout(w13, scales["up"]), to_kernel_layout(w2, scales["down"])
    return x, w13, w2, weights.flatten().float(), ids, scales


def layouts(block_m: int, mxfp4: bool) -> tuple[bool, ...]:
    """Forms to try (sorted_act: kernels.moe_gemm_tma): the TMA form for tall dense tiles only (the
    prefill sizes where it was measured; its descriptors read dense weights only)."""
    return (False, True) if block_m >= 64 and not mxfp4 else (False,)


def _gemm_call(shape: tuple[int, int, int, int], n_tok: int, mxfp4: bool | str, block_m: int, name: str, sorted_act: bool):
    """A function that launches one GEMM of the MoE ('up' or 'down') with a given tile config."""
    n_experts, top_k, hidden, inter = shape
    x, w13, w2, flat_w, ids, scales = _problem(shape, n_tok, mxfp4)
    n_valid = n_tok * top_k
    align = moe_align(ids, n_experts, block_m)
    max_rows = max_padded_rows(n_valid, n_experts, block_m)
    act = torch.randn(max_rows if sorted_act else n_valid, inter, device="cuda").to(torch.bfloat16)
    out = torch.empty(n_valid, hidden, device="cuda", dtype=torch.bfloat16)
    a, b, c, a_div, gated, weighted = (x, w13, act, top_k, True, False) if name == "up" else \
        (act, w2, out, 1, False, True)
    return lambda cfg: _launch_gemm(a, b, c, flat_w, align, n_valid, max_rows, block_m, cfg, a_div, gated, weighted,
                                    sorted_act, scales[name])


def _compile(job: tuple) -> None:
    """Pool worker: one launch on a small problem of the same shape puts the kernel in Triton's cache."""
    shape, mxfp4, block_m, name, sorted_act, cfg = job
    try:
        _gemm_call(shape, 64, mxfp4, block_m, name, sorted_act)(cfg)
        torch.cuda.synchronize()
    except Exception:  # out of shared memory / registers: the timing pass skips it too
        pass


def precompile(shape: tuple[int, int, int, int], tokens: list[int], mxfp4: bool | str, jobs: int) -> None:
    """Compiles every candidate of every BLOCK_M these token counts try, in parallel processes."""
    block_ms = sorted({m for n in tokens for m in block_m_options(n, shape[1], shape[0])})
    work = [(shape, mxfp4, m, name, layout, cfg) for m in block_ms for name in ("up", "down") for layout in layouts(m, mxfp4)
            for cfg in candidates(m, layout, mxfp4)]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_compile, work))


def bench(timer: Timer, fn) -> float:
    try:
        return timer.ms(fn)[0]
    except Exception:  # out of shared memory / registers for this tile
        return float("inf")


def tune_shape(shape: tuple[int, int, int, int], tokens: list[int], path: Path, mxfp4: bool | str = False) -> dict:
    """Tunes each token count in turn, rewriting the table after each so a run cut short keeps its rows."""
    timer = Timer(reps=15, warmup=2)
    table = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
    for n_tok in tokens:
        best = (float("inf"), None)
        for block_m in block_m_options(n_tok, shape[1], shape[0]):
            for sorted_act in layouts(block_m, mxfp4):
                picks, total = {}, 0.0
                for name in ("up", "down"):
                    call = _gemm_call(shape, n_tok, mxfp4, block_m, name, sorted_act)
                    timed = [(bench(timer, lambda cfg=cfg: call(cfg)), cfg) for cfg in candidates(block_m, sorted_act, mxfp4)]
                    for t, cfg in timed:
                        print(f"    T={n_tok} BLOCK_M={block_m} TMA={sorted_act} {name}: {t * 1e3:8.1f} us {cfg}",
                              flush=True)
                    t, picks[name] = min(timed, key=lambda tc: tc[0])
                    total += t
                if total < best[0]:
                    best = (total, {"BLOCK_M": block_m, **({"TMA": True} if sorted_act else {}), **picks})
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
    parser.add_argument("--mxfp4-kernel-layout", action="store_true",
                        help="MXFP4 experts in kernels.mxfp4_layout's form (kernels.moe_mxfp4; tables of their own)")
    parser.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1), help="compiling processes")
    args = parser.parse_args()
    dev = device_name(torch.device("cuda"))
    mxfp4 = FORM if args.mxfp4_kernel_layout else args.mxfp4
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.shapes:
        shape = SHAPES[name]
        start = time.time()
        print(f"{name}: E={shape[0]} top{shape[1]} H={shape[2]} I={shape[3]} on {dev}", flush=True)
        precompile(shape, args.tokens, mxfp4, args.jobs)
        print(f"  compiled in {time.time() - start:.0f} s", flush=True)
        path = args.out_dir / config_file_name(shape[0], shape[2], shape[3], dev, mxfp4)
        tune_shape(shape, args.tokens, path, mxfp4)
        print(f"  wrote {path} in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

"""Tunes the fused-MoE tile configs on the local GPU and writes kernels/configs/*.json.

For each token count, every BLOCK_M candidate gets one moe_align, then the up and down
GEMMs are tuned independently over a small grid; the BLOCK_M with the best summed time
wins. --mxfp4 tunes MXFP4 experts (GPT-OSS) into their own tables.
Run: PYTHONPATH=backend_src:<dir holding laminar_kernels> python perf/tune_moe.py
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).parent))
from moe_bench_util import moe_inputs, mxfp4_weights  # noqa: E402

from laminar_kernels.fused_moe import _launch_gemm  # noqa: E402
from laminar_kernels.moe_align import max_padded_rows, moe_align  # noqa: E402
from laminar_kernels.moe_config import CONFIG_DIR, config_file_name, device_name  # noqa: E402

TOKENS = [1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
SHAPES = {"qwen3-30b-a3b-tp1": (128, 8, 2048, 768), "qwen3-30b-a3b-tp2": (128, 8, 2048, 384),
          "gpt-oss-like": (32, 4, 2880, 2880)}


def _gemm(bn: int, bk: int, group: int, warps: int, stages: int) -> dict:
    return {"BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps, "num_stages": stages}


def candidates(block_m: int) -> list[dict]:
    """Small-M tiles stream weights (deep K, many stages); large-M tiles are square-ish for reuse."""
    if block_m <= 32:
        return [_gemm(bn, bk, 1, w, s) for bn in (64, 128) for bk in (64, 128, 256) for w, s in ((4, 3), (4, 4))
                if not (bk == 256 and s == 4)]
    return [_gemm(bn, bk, 8, w, s) for bn, bk, w, s in (
        (64, 64, 4, 4), (128, 64, 4, 4), (128, 64, 8, 3), (128, 128, 8, 3), (256, 64, 8, 3), (64, 128, 4, 3),
        (128, 64, 8, 4))]


def block_m_options(n_tok: int, top_k: int, n_experts: int) -> list[int]:
    rows = n_tok * top_k / n_experts
    if rows <= 8:
        return [16, 32]
    if rows <= 64:
        return [16, 32, 64]
    return [64, 128]


def bench(fn) -> float:
    try:
        return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")
    except Exception:  # out of shared memory / registers for this tile
        return float("inf")


def tune_shape(n_experts: int, top_k: int, hidden: int, inter: int, tokens: list[int], path: Path,
               mxfp4: bool = False) -> dict:
    """Tunes each token count in turn, rewriting the table after each so a run cut short keeps its rows."""
    table = {}
    gen = torch.Generator().manual_seed(0)
    packed = (mxfp4_weights(n_experts, 2 * inter, hidden, gen), mxfp4_weights(n_experts, hidden, inter, gen)) \
        if mxfp4 else None
    scales = {"up": packed[0][1], "down": packed[1][1]} if mxfp4 else {"up": None, "down": None}
    for n_tok in tokens:
        x, w13, w2, weights, ids = moe_inputs(n_tok, n_experts, top_k, hidden, inter)
        if mxfp4:
            w13, w2 = packed[0][0], packed[1][0]
        n_valid = n_tok * top_k
        flat_w = weights.flatten().float()
        best = (float("inf"), None)
        for block_m in block_m_options(n_tok, top_k, n_experts):
            align = moe_align(ids, n_experts, block_m)
            max_rows = max_padded_rows(n_valid, n_experts, block_m)
            act = torch.randn(n_valid, inter, device="cuda").to(torch.bfloat16)
            out = torch.empty(n_valid, hidden, device="cuda", dtype=torch.bfloat16)
            picks = {}
            total = 0.0
            for name, (a, b, c, a_div, gated, weighted) in {
                "up": (x, w13, act, top_k, True, False), "down": (act, w2, out, 1, False, True)
            }.items():
                timed = [(bench(lambda cfg=cfg: _launch_gemm(a, b, c, flat_w, align, n_valid, max_rows, block_m,
                                                             cfg, a_div, gated, weighted, scales[name])), cfg)
                         for cfg in candidates(block_m)]
                t, cfg = min(timed, key=lambda tc: tc[0])
                picks[name] = cfg
                total += t
            if total < best[0]:
                best = (total, {"BLOCK_M": block_m, **picks})
        table[n_tok] = best[1]
        path.write_text(json.dumps({str(k): v for k, v in table.items()}, indent=1) + "\n")
        print(f"  T={n_tok:5d}: {best[0] * 1e3:8.1f} us  {best[1]}", flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--out-dir", type=Path, default=CONFIG_DIR)
    parser.add_argument("--mxfp4", action="store_true", help="MXFP4 experts (their own tables)")
    args = parser.parse_args()
    dev = device_name(torch.device("cuda"))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.shapes:
        n_experts, top_k, hidden, inter = SHAPES[name]
        start = time.time()
        print(f"{name}: E={n_experts} top{top_k} H={hidden} I={inter} on {dev}", flush=True)
        path = args.out_dir / config_file_name(n_experts, hidden, inter, dev, args.mxfp4)
        tune_shape(n_experts, top_k, hidden, inter, args.tokens, path, args.mxfp4)
        print(f"  wrote {path} in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

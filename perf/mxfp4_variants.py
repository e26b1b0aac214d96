"""kernels.moe_mxfp4 variants at GPT-OSS-20B's expert shape, timed as bench_kernels times (graphs, L2 flushed).

Compares the inline-PTX upcast (packed bf16x2 lanes) with the same bit placement in plain Triton
(ASM off), in each form the heuristic picks, so that a change of the upcast is judged by one call.
GPU: PYTHONPATH=backend_src:<dir holding laminar_kernels> python perf/mxfp4_variants.py
"""
from __future__ import annotations

import copy
import json

import torch
from bench_moe_mxfp4 import SHAPE, SWIGLU, experts
from kernel_timing import Timer

import laminar_kernels as K
from laminar.ops import torch_ops as R
from laminar_kernels.moe_mxfp4 import default_mxfp4_config


def with_asm(cfg: dict, asm: bool) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["up"]["ASM"] = cfg["down"]["ASM"] = asm
    return cfg


def main() -> None:
    timer, gen = Timer(), torch.Generator().manual_seed(0)
    w = experts(SHAPE, torch.device("cuda"), gen)
    e, k, h = SHAPE["experts"], SHAPE["top_k"], SHAPE["hidden"]
    for n_tok in [1, 64, 256, 2048, 8192]:
        x = torch.randn(n_tok, h, generator=gen).to("cuda", torch.bfloat16)
        weights, ids = R.route_topk(torch.randn(n_tok, e, generator=gen).to("cuda"), k, True)
        base = default_mxfp4_config(n_tok, k, e, True)
        row = {"tokens": n_tok, "config": base}
        for asm in (True, False):
            cfg = with_asm(base, asm)
            run = lambda cfg=cfg: K.fused_moe(x, w["up_k"][0], w["down_k"][0], weights, ids, b13=w["b13"],  # noqa: E731
                                              b2=w["b2"], w13_scales=w["up_k"][1], w2_scales=w["down_k"][1],
                                              swiglu=SWIGLU, config=cfg)
            row[f"asm_{asm}_ms"] = timer.ms(run)[0]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Tile configs for the MoE GEMMs: a tuned JSON table per (E, H, I, weight format, device), else heuristics.

Tables live in kernels/configs/ and are written by perf/tune_moe.py. Each maps a token
count to {"BLOCK_M", "up": {...}, "down": {...}}; a lookup takes the nearest token count.
BLOCK_M is shared by both GEMMs because it fixes the expert padding of one moe_align.
MXFP4 experts have tables of their own (decoding in registers changes which tiles win); their
BLOCK_K must be a multiple of 32, one scale group, as every heuristic tile is. MXFP4 experts in
kernels.mxfp4_layout's form have theirs too (tag kernels.moe_mxfp4.FORM, read by moe_mxfp4).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"


def config_file_name(n_experts: int, hidden: int, inter: int, device_name: str, mxfp4: bool | str = False) -> str:
    """One table per expert shape, weight format and GPU model (tile choices differ across all three).
    mxfp4: True for the release-layout MXFP4 GEMM, or a kernel's own tag (kernels.moe_mxfp4.FORM)."""
    tag = "_MXFP4" if mxfp4 is True else (f"_{mxfp4}" if mxfp4 else "")
    return f"E{n_experts}_H{hidden}_I{inter}{tag}_{device_name.replace(' ', '_')}.json"


def device_name(device: torch.device) -> str:
    """The GPU's marketing name; 'cpu' for the interpreter."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@functools.lru_cache(maxsize=None)
def _load_table(file_name: str) -> dict[int, dict] | None:
    path = CONFIG_DIR / file_name
    if not path.exists():
        return None
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


def default_config(n_tokens: int, top_k: int, n_experts: int, dtype: torch.dtype, on_gpu: bool) -> dict:
    """Heuristic tiles: small M tiles while rows per expert are few (weight-bandwidth bound), big ones after."""
    if not on_gpu:  # interpreter: fewer, larger programs run fastest
        return {"BLOCK_M": 16, "up": _gemm(64, 64, 1, 4, 1), "down": _gemm(64, 64, 1, 4, 1)}
    if dtype == torch.float32:  # fp32 tiles must fit shared memory; correctness, not speed
        return {"BLOCK_M": 32, "up": _gemm(32, 32, 8, 4, 2), "down": _gemm(64, 32, 8, 4, 2)}
    rows_per_expert = n_tokens * top_k / max(n_experts, 1)
    if rows_per_expert <= 16:
        return {"BLOCK_M": 16, "up": _gemm(64, 128, 1, 4, 4), "down": _gemm(64, 128, 1, 4, 4)}
    if rows_per_expert <= 64:
        return {"BLOCK_M": 32, "up": _gemm(64, 128, 8, 4, 4), "down": _gemm(64, 128, 8, 4, 4)}
    return {"BLOCK_M": 128, "up": _gemm(128, 64, 8, 8, 3), "down": _gemm(128, 64, 8, 8, 4)}


def _gemm(block_n: int, block_k: int, group_m: int, warps: int, stages: int) -> dict:
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": group_m, "num_warps": warps, "num_stages": stages}


def get_config(
    n_tokens: int, top_k: int, n_experts: int, hidden: int, inter: int, dtype: torch.dtype, device: torch.device,
    mxfp4: bool = False,
) -> dict:
    """Tuned entry nearest in token count when a table exists for this shape and GPU, else the default."""
    on_gpu = device.type == "cuda"
    if on_gpu and dtype != torch.float32:
        table = _load_table(config_file_name(n_experts, hidden, inter, device_name(device), mxfp4))
        if table:
            return table[min(table, key=lambda m: abs(m - n_tokens))]
    return default_config(n_tokens, top_k, n_experts, dtype, on_gpu)

"""Tile configs for the MoE GEMMs: a tuned JSON table per (E, H, I, weight format, device), else heuristics.

Tables live in kernels/configs/ and are written by perf/tune_moe.py. Each maps a token
count to {"BLOCK_M", "up": {...}, "down": {...}}; a lookup takes the nearest token count.
BLOCK_M is shared by both GEMMs because it fixes the expert padding of one moe_align.
MXFP4 and FP8 experts have tables of their own (decoding in registers changes which tiles win).
MXFP4 BLOCK_K must be a multiple of 32, one scale group, as every heuristic tile is. FP8 rows say
whether they run W8A8 ("A8", kernels.fp8); FP8 BLOCK_K divides 128 (one weight scale block), and
a W8A8 up GEMM's BLOCK_N is a multiple of 128 (its epilogue quantizes whole activation groups).
MXFP4 experts in kernels.mxfp4_layout's form (3-D uint8) have tables of their own too ("MXFP4H",
read by kernels.moe_mxfp4).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"


MXFP4_KERNEL_LAYOUT = "MXFP4H"  # the table key of MXFP4 experts in kernels.mxfp4_layout's form


def weight_format(w13: torch.Tensor) -> str:
    """The table key of an expert weight: "" (16-bit), "MXFP4" (the release's packed uint8 blocks, 4-D),
    MXFP4_KERNEL_LAYOUT (kernels.mxfp4_layout's form, 3-D) or "FP8" (float8_e4m3fn)."""
    if w13.dtype == torch.uint8:
        return MXFP4_KERNEL_LAYOUT if w13.dim() == 3 else "MXFP4"
    return "FP8" if w13.dtype == torch.float8_e4m3fn else ""


def config_file_name(n_experts: int, hidden: int, inter: int, device_name: str, fmt: str = "") -> str:
    """One table per expert shape, weight format and GPU model (tile choices differ across all three)."""
    return f"E{n_experts}_H{hidden}_I{inter}{'_' + fmt if fmt else ''}_{device_name.replace(' ', '_')}.json"


def device_name(device: torch.device) -> str:
    """The GPU's marketing name; 'cpu' for the interpreter."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@functools.lru_cache(maxsize=None)
def _load_table(file_name: str) -> dict[int, dict] | None:
    path = CONFIG_DIR / file_name
    if not path.exists():
        return None
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


def default_config(n_tokens: int, top_k: int, n_experts: int, dtype: torch.dtype, on_gpu: bool, fmt: str = "") -> dict:
    """Heuristic tiles: small M tiles while rows per expert are few (weight-bandwidth bound), big ones after."""
    if fmt == "FP8":
        return _fp8_default(n_tokens * top_k / max(n_experts, 1), on_gpu)
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


def _fp8_default(rows_per_expert: float, on_gpu: bool) -> dict:
    """FP8 experts without a table: W8A16 while weight reads bound the GEMMs (narrow N tiles, K tiles over
    two weight blocks), W8A8 (FP8 tensor cores) from about 8 rows per expert. Tiles and the switch point
    are those the H100 tables chose (perf/results/fp8-h100); 128-row W8A8 tiles ran 2x slower there."""
    if not on_gpu:
        return {"BLOCK_M": 16, "A8": True, "up": _gemm(128, 64, 1, 4, 1), "down": _gemm(64, 64, 1, 4, 1)}
    if rows_per_expert <= 8:
        return {"BLOCK_M": 16, "A8": False, "up": _gemm(32, 256, 1, 4, 3), "down": _gemm(64, 128, 1, 4, 3)}
    return {"BLOCK_M": 64, "A8": True, "up": _gemm(128, 128, 8, 8, 4), "down": _gemm(128, 128, 8, 8, 3)}


def _gemm(block_n: int, block_k: int, group_m: int, warps: int, stages: int) -> dict:
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": group_m, "num_warps": warps, "num_stages": stages}


def get_config(
    n_tokens: int, top_k: int, n_experts: int, hidden: int, inter: int, dtype: torch.dtype, device: torch.device,
    fmt: str = "",
) -> dict:
    """Tuned entry nearest in token count when a table exists for this shape, weight format and GPU, else the default."""
    on_gpu = device.type == "cuda"
    if on_gpu and dtype != torch.float32:
        table = _load_table(config_file_name(n_experts, hidden, inter, device_name(device), fmt))
        if table:
            return table[min(table, key=lambda m: abs(m - n_tokens))]
    return default_config(n_tokens, top_k, n_experts, dtype, on_gpu, fmt)

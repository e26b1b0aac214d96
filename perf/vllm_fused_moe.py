"""vLLM's bf16 fused-MoE path, rewritten here as the benchmark's peer (never used by the engine).

Written from vllm-project/vllm @ 000d1458098ebf47491dad470d164d443ab18a9c,
vllm/model_executor/layers/fused_moe/fused_moe.py (`fused_moe_kernel`, `fused_experts`):
one grouped GEMM kernel run twice with vLLM's tuned tiles (perf/vllm_moe_configs.json,
one config for both GEMMs, nearest token count). What differs from our kernels is kept
as vLLM does it: the up GEMM writes all 2I columns and a separate SiLU-and-mul pass
follows; weight columns wrap modulo N instead of being masked; the down GEMM multiplies
the routing weight. The routing sort, the activation and the top-k sum are ours (the same
semantics as vLLM's moe_align_block_size, silu_and_mul and moe_sum CUDA ops).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import triton
import triton.language as tl

from laminar_kernels.activation import silu_and_mul
from laminar_kernels.moe_align import max_padded_rows, moe_align
from laminar_kernels.moe_reduce import topk_sum

CONFIGS = Path(__file__).parent / "vllm_moe_configs.json"


@triton.jit
def _vllm_moe_gemm(
    a_ptr, b_ptr, c_ptr, w_ptr, sorted_ptr, expert_ptr, total_ptr, N, K, EM, n_valid,
    stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_cn,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr, top_k: tl.constexpr,
):
    """C[row] = A[row // top_k] @ B[expert]^T for the expert-sorted rows of one tile."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(EM, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    in_group = GROUP_SIZE_M * num_pid_n
    first_m = pid // in_group * GROUP_SIZE_M
    size_m = min(num_pid_m - first_m, GROUP_SIZE_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    if pid_m * BLOCK_SIZE_M >= tl.load(total_ptr):
        return
    rows = tl.load(sorted_ptr + pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M).to(tl.int64))
    row_ok = rows < n_valid
    expert = tl.load(expert_ptr + pid_m).to(tl.int64)
    cols = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N).to(tl.int64)) % N
    ks = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + rows[:, None] // top_k * stride_am + ks[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + ks[:, None] * stride_bk + cols[None, :] * stride_bn
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        left = K - k * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & (ks[None, :] < left), other=0.0)
        b = tl.load(b_ptrs, mask=ks[:, None] < left, other=0.0)
        acc = tl.dot(a, b, acc=acc)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk
    if MUL_ROUTED_WEIGHT:
        acc = acc * tl.load(w_ptr + rows, mask=row_ok, other=0)[:, None]
    out_cols = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    tl.store(c_ptr + stride_cm * rows[:, None] + stride_cn * out_cols[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (out_cols[None, :] < N))


@functools.lru_cache(maxsize=None)
def _table(n_experts: int, inter: int, device: str) -> dict[int, list[int]]:
    key = f"E={n_experts},N={inter},device_name={device.replace(' ', '_')}"
    return {int(m): cfg for m, cfg in json.loads(CONFIGS.read_text())[key]["table"].items()}


def _gemm(a, b, c, weights, align, n_valid: int, em: int, cfg: list[int], top_k: int, weighted: bool) -> None:
    block_m, block_n, block_k, group_m, warps, stages = cfg
    sorted_ids, expert_ids, total = align
    n_out, k_dim = b.shape[1], b.shape[2]
    grid = (triton.cdiv(em, block_m) * triton.cdiv(n_out, block_n),)
    _vllm_moe_gemm[grid](
        a, b, c, weights, sorted_ids, expert_ids, total, n_out, k_dim, em, n_valid,
        a.stride(0), a.stride(1), b.stride(0), b.stride(2), b.stride(1), c.stride(0), c.stride(1),
        BLOCK_SIZE_M=block_m, BLOCK_SIZE_N=block_n, BLOCK_SIZE_K=block_k, GROUP_SIZE_M=group_m,
        MUL_ROUTED_WEIGHT=weighted, top_k=top_k, num_warps=warps, num_stages=stages,
    )


def vllm_fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                   topk_ids: torch.Tensor) -> torch.Tensor:
    """Same contract as laminar_kernels.fused_moe (x [T, H], w13 [E, 2I, H], w2 [E, H, I])."""
    n_tok, top_k = topk_ids.shape
    n_experts, two_inter, hidden = w13.shape
    table = _table(n_experts, two_inter // 2, torch.cuda.get_device_name(x.device))
    cfg = table[min(table, key=lambda m: abs(m - n_tok))]
    n_valid = n_tok * top_k
    align = moe_align(topk_ids, n_experts, cfg[0])
    em = max_padded_rows(n_valid, n_experts, cfg[0])
    weights = topk_weights.reshape(-1).float()
    gate_up = torch.empty((n_valid, two_inter), dtype=x.dtype, device=x.device)
    _gemm(x, w13, gate_up, weights, align, n_valid, em, cfg, top_k, False)
    act = silu_and_mul(gate_up)
    partial = torch.empty((n_valid, hidden), dtype=x.dtype, device=x.device)
    _gemm(act, w2, partial, weights, align, n_valid, em, cfg, 1, True)
    return topk_sum(partial, n_tok, top_k)

"""How many KV cache blocks a rank holds, and the cache itself.

The count comes from EngineArgs (an explicit number of blocks, or a byte budget) or, on CUDA,
from the memory left after the weights; every rank takes the smallest count, since block ids are
rank 0's and must mean the same block everywhere. A pipeline stage holds the cache of its layers only.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from laminar.config import EngineArgs, ModelConfig

CPU_DEFAULT_KV_BYTES = 256 << 20
KVCache = tuple[torch.Tensor, torch.Tensor]  # one layer's (keys, values): [blocks, block_size, kv_heads, head_dim]


def num_kv_blocks(cfg: ModelConfig, args: EngineArgs, num_kv_heads: int, device: torch.device,
                  dtype: torch.dtype, layers: range, control: object | None) -> int:
    """Blocks from an explicit count, a byte budget, or (CUDA) the free memory left after the weights;
    control: the gloo group of every rank (None: a single process)."""
    block_bytes = 2 * len(layers) * args.block_size * num_kv_heads * cfg.head_dim * dtype.itemsize
    if args.num_kv_blocks is not None:
        return args.num_kv_blocks
    if args.kv_cache_bytes is not None:
        budget = args.kv_cache_bytes
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        activations = args.max_num_batched_tokens * cfg.hidden_size * 64 + _expert_scratch_bytes(cfg, args, dtype)
        budget = free - total * (1 - args.gpu_memory_utilization) - activations
    else:
        budget = CPU_DEFAULT_KV_BYTES
    blocks = torch.tensor([max(int(budget // block_bytes), 0)], dtype=torch.int64)
    if control is not None:  # every rank must hold the same block ids
        dist.all_reduce(blocks, op=dist.ReduceOp.MIN, group=control)
    return int(blocks.item())


def _expert_scratch_bytes(cfg: ModelConfig, args: EngineArgs, dtype: torch.dtype) -> int:
    """What a step's fused MoE may allocate for its packed experts at the token budget (per rank)."""
    if not cfg.num_experts or args.dequantize_experts:
        return 0
    inter = cfg.moe_intermediate_size // args.tensor_parallel_size
    return cfg.quantization.fmt.expert_scratch_bytes(cfg.num_experts, cfg.hidden_size, inter,
                                                     args.max_step_rows, cfg.top_k, dtype)


def allocate_kv_caches(cfg: ModelConfig, num_blocks: int, block_size: int, num_kv_heads: int,
                       device: torch.device, dtype: torch.dtype, layers: range) -> dict[int, KVCache]:
    """Zeroed keys and values for each of these layers, by layer index."""
    shape = (num_blocks, block_size, num_kv_heads, cfg.head_dim)
    return {i: (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for i in layers}

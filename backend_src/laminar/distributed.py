"""Tensor-parallel process group: the collectives the sharded model needs.

Rank 0 lives in the engine's process; ranks 1..N-1 are worker processes
(`laminar.tp_worker`). Activations move over the device backend (NCCL on GPUs,
gloo on the CPU); each step's batch description moves over a separate gloo
group so that it never waits behind device work.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Workers wait for the next step on the control group for as long as the server stays idle.
CONTROL_TIMEOUT = timedelta(days=3650)


@dataclass
class TensorParallel:
    """This process's place in the tensor-parallel group; size 1 means no communication."""

    rank: int = 0
    size: int = 1
    control: object | None = None  # the gloo group for step messages (size > 1)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums the partial results of a row-parallel layer (after attention, after the MLP)."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def gather_columns(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenates every rank's [T, n] shard into [T, size * n] (vocab-parallel logits)."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=-1)

    def shard(self, n: int, what: str) -> int:
        """n / size, or a clear error naming the dimension that does not split."""
        if n % self.size:
            raise ValueError(f"{what} ({n}) is not divisible by tensor_parallel_size {self.size}")
        return n // self.size


@dataclass(frozen=True)
class ShardLayout:
    """What one rank holds of each sharded dimension (Megatron layout).

    Attention heads and MLP/expert intermediate sizes split evenly; with fewer KV
    heads than ranks each KV head is replicated on size // num_kv_heads ranks;
    the vocabulary splits into equal padded ranges.
    """

    num_heads: int
    num_kv_heads: int
    kv_part: int        # which of the model's KV-head parts this rank holds
    kv_parts: int
    intermediate_size: int
    moe_intermediate_size: int
    vocab_per_rank: int
    vocab_start: int

    @classmethod
    def of(cls, cfg, tp: TensorParallel) -> "ShardLayout":
        kv, size, rank = cfg.num_kv_heads, tp.size, tp.rank
        if kv % size and size % kv:
            raise ValueError(f"num_key_value_heads ({kv}) and tensor_parallel_size ({size}) must divide one another")
        kv_parts = min(kv, size)
        vocab_per_rank = -(-cfg.vocab_size // size)
        return cls(
            num_heads=tp.shard(cfg.num_heads, "num_attention_heads"),
            num_kv_heads=kv // kv_parts,
            kv_part=rank * kv_parts // size,
            kv_parts=kv_parts,
            intermediate_size=tp.shard(cfg.intermediate_size, "intermediate_size"),
            moe_intermediate_size=tp.shard(cfg.moe_intermediate_size, "moe_intermediate_size"),
            vocab_per_rank=vocab_per_rank,
            vocab_start=rank * vocab_per_rank,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_tensor_parallel(rank: int, size: int, port: int, device: torch.device, timeout_s: float) -> TensorParallel:
    """Joins the group (rank 0 must be among the callers) and returns this rank's handle. A peer
    that stops answering fails an activation collective after timeout_s instead of hanging."""
    if size == 1:
        return TensorParallel()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=timedelta(seconds=timeout_s))
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return TensorParallel(rank, size, control)


def destroy_tensor_parallel(tp: TensorParallel) -> None:
    if tp.size > 1 and dist.is_initialized():
        dist.destroy_process_group()

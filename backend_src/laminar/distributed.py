"""The process group of a multi-rank engine: tensor parallelism inside each pipeline stage.

Ranks are laid out stage-major, rank = stage * tensor_parallel_size + tp_rank. Rank 0 (stage 0,
TP rank 0) lives in the engine's process; every other rank is a `python -m laminar.worker`
process, started by rank 0 on its own node or by hand (or a launcher) on other nodes. They meet
at a rendezvous address: rank 0 serves a TCP store there and writes a fresh generation key into
it, and the group is formed under that key, so a worker that outlived an earlier rank 0 never
joins the remains of the old group.

Activations move over the device backend (NCCL on GPUs, gloo on the CPU): all-reduces inside a
stage's TP group, point-to-point sends between stages (laminar.pipeline). Each step's batch
description moves over a separate gloo group of every rank, so that it never waits behind
device work.
"""
from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from laminar.pipeline import PipelineParallel

# Workers wait for the next step on the control group for as long as the server stays idle.
CONTROL_TIMEOUT = timedelta(days=3650)
GENERATION_KEY = "laminar/generation"
JOIN_GRACE_S = 60.0  # beyond tp_timeout_s, for the ranks to start and come to the rendezvous
JOIN_POLL_S = 0.05


@dataclass
class TensorParallel:
    """This process's place in its stage's tensor-parallel group; size 1 means no communication."""

    rank: int = 0
    size: int = 1
    group: object | None = None  # the stage's TP group; None: the default group (one stage)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums the partial results of a row-parallel layer (after attention, after the MLP)."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def gather_columns(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenates every rank's [T, n] shard into [T, size * n] (vocab-parallel logits)."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
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


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks meet: rank 0's TCP store."""

    host: str
    port: int

    @classmethod
    def loopback(cls) -> "Rendezvous":
        """A free port on this host: every rank runs here."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return cls("127.0.0.1", s.getsockname()[1])


@dataclass
class Distributed:
    """This process's place in the whole group; the defaults are the single-process engine."""

    rank: int = 0
    local_rank: int = 0           # which of its node's devices this rank drives
    tp: TensorParallel = field(default_factory=TensorParallel)
    pp: PipelineParallel = field(default_factory=PipelineParallel)
    control: object | None = None  # gloo group of every rank: step messages, the KV block count
    store: object | None = None    # the rendezvous store (rank 0 serves it)

    @property
    def world_size(self) -> int:
        return self.tp.size * self.pp.size


def open_rendezvous(where: Rendezvous, spec: dict, timeout_s: float) -> tuple[dist.TCPStore, str]:
    """Rank 0: serves the store at `where` (on every interface) and publishes a new generation with
    the spec the workers build from (engine arguments, model length)."""
    store = dist.TCPStore(where.host, where.port, None, is_master=True, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    generation = uuid.uuid4().hex
    store.set(f"{generation}/spec", json.dumps(spec))
    store.set(GENERATION_KEY, generation)  # last: a worker that reads it finds the spec
    return store, generation


def find_rendezvous(where: Rendezvous, served: str, timeout_s: float) -> tuple[dist.TCPStore, str, dict]:
    """A worker: the store at `where`, its generation and spec. served: the generation this worker
    served last; a store still showing it is the old rank 0's, and joining it is refused
    (RuntimeError, for the caller to retry), as is a store that does not answer in timeout_s."""
    store = dist.TCPStore(where.host, where.port, None, is_master=False, timeout=timedelta(seconds=timeout_s))
    generation = store.get(GENERATION_KEY).decode()
    if generation == served:
        raise RuntimeError(f"the rendezvous at {where.host}:{where.port} still shows the group this worker left")
    return store, generation, json.loads(store.get(f"{generation}/spec").decode())


def form_group(rank: int, local_rank: int, tp_size: int, pp_size: int, store: dist.TCPStore, generation: str,
               device: torch.device, timeout_s: float, check: Callable[[], None] = lambda: None) -> Distributed:
    """Every rank: joins the group of this generation and returns this rank's handle. A peer that stops
    answering fails an activation collective after timeout_s instead of hanging.

    Ranks first count themselves in on the store and wait for one another (starting a process and
    importing torch takes a while: timeout_s + JOIN_GRACE_S; check() raises to stop waiting, as
    when a local worker died), so that the process group forms with everyone there and timeout_s
    bounds only a peer that stops answering."""
    world, key = tp_size * pp_size, f"{generation}/joined"
    store.add(key, 1)
    deadline = time.monotonic() + timeout_s + JOIN_GRACE_S
    while (count := store.add(key, 0)) < world:
        check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} of {world} ranks came within {timeout_s + JOIN_GRACE_S:.0f} s")
        time.sleep(JOIN_POLL_S)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, store=dist.PrefixStore(generation, store), rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
        stage, tp_rank = divmod(rank, tp_size)
        groups = [dist.new_group(list(range(s * tp_size, (s + 1) * tp_size))) for s in range(pp_size)] \
            if pp_size > 1 and tp_size > 1 else [None] * pp_size
    except BaseException:
        _forget_failed_group()
        raise
    return Distributed(rank, local_rank, TensorParallel(tp_rank, tp_size, groups[stage]),
                       PipelineParallel(stage, pp_size, tp_size, tp_rank), control, store)


def _forget_failed_group() -> None:
    """A group that failed to form: destroyed, or, when init itself failed, its name forgotten. torch
    numbers groups per process and counts one that never formed; the next group this process forms
    must be numbered as a fresh peer's are, or they look for each other under different names."""
    if dist.is_initialized():
        dist.destroy_process_group()
    else:
        dist.distributed_c10d._world.group_count = 0


def leave(group: Distributed) -> None:
    """Destroys the process group and drops the handles of its groups, which hold the store: rank 0's
    rendezvous port is free again once they are gone. Rank 0 first withdraws the generation, so that
    no worker looking for the next group joins this one while it goes. Idempotent."""
    if group.rank == 0 and group.store is not None:
        group.store.delete_key(GENERATION_KEY)
    if group.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    group.control = group.tp.group = group.store = None

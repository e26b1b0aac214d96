"""Owns one rank's model shard, its KV cache and (rank 0) the sampler; turns a StepPlan into tokens.

Rank 0 flattens the plan into StepInputs, sends them to the tensor-parallel
workers, and runs the same forward as they do; only rank 0 samples.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from laminar.config import EngineArgs, ModelConfig
from laminar.cuda_graphs import DecodeGraphs, MixedGraphs
from laminar.distributed import ShardLayout, TensorParallel
from laminar.loader import load_dummy, load_safetensors
from laminar.models import ForwardBatch, Qwen3ForCausalLM
from laminar.models.qwen3 import ForwardResult
from laminar.ops import AttentionMetadata, get_ops
from laminar.outputs import TokenLogprobs
from laminar.sampler import Sampler
from laminar.scheduler import StepPlan
from laminar.step_inputs import StepInputs
from laminar.tp_worker import WorkerGroup

CPU_DEFAULT_KV_BYTES = 256 << 20
MAX_GRAPH_BATCH = 256  # larger decode batches run eagerly, where launch overhead matters less
MAX_MIXED_GRAPH_TOKENS = 2048  # larger mixed batches keep the GPU busier than the host's launches


@dataclass
class StepResult:
    tokens: list[int]          # one per plan.sample_seqs
    experts_touched: int       # sum over the MoE layers run of distinct experts their tokens hit
    prepare_s: float           # host time spent building and sending the inputs
    logprobs: list[TokenLogprobs | None] | None = None  # per sampled token, when any request asked


class ModelRunner:
    def __init__(self, cfg: ModelConfig, args: EngineArgs, max_model_len: int, tp: TensorParallel | None = None) -> None:
        """tp: given by a worker process; rank 0 (tp None) starts the workers itself when TP > 1."""
        self.cfg, self.args = cfg, args
        self.workers = None
        if tp is None and args.tensor_parallel_size > 1:
            ShardLayout.of(cfg, TensorParallel(0, args.tensor_parallel_size))  # shape errors before any spawn
            self.workers = WorkerGroup(args, max_model_len)
            tp = self.workers.tp
        self.tp = tp or TensorParallel()
        self.device = args.resolved_device()
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.tp.rank)
        self.dtype = args.resolved_dtype(self.device)
        self.block_size = args.block_size
        ops = get_ops(self.device)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = Qwen3ForCausalLM(cfg, ops, max_model_len, self.tp)
        finally:
            torch.set_default_dtype(default_dtype)
        self.model.requires_grad_(False)
        if args.load_format == "dummy":
            load_dummy(self.model, args.seed)
        else:
            load_safetensors(self.model, args.model)
        self.num_blocks = self._num_kv_blocks()
        shape = (self.num_blocks, self.block_size, self.model.layout.num_kv_heads, cfg.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=self.dtype, device=self.device),
             torch.zeros(shape, dtype=self.dtype, device=self.device))
            for _ in range(cfg.num_layers)
        ]
        self.expert_hits = torch.zeros(
            (max(self.model.num_moe_layers, 1), max(cfg.num_experts, 1)), dtype=torch.bool, device=self.device
        )
        self.carry: tuple[torch.Tensor, torch.Tensor] | None = None  # the prefill batch's rows between groups
        self.sampler = Sampler()
        self.decode_graphs = self.mixed_graphs = None
        # Chunked steps hold at most the budget's tokens; layered ones the decodes besides.
        mixed_rows = args.max_num_batched_tokens + (args.max_num_seqs if args.schedule_mode == "layered" else 0)
        if self.device.type == "cuda" and not args.enforce_eager:
            self.decode_graphs = DecodeGraphs(self.model, self.kv_caches, self.expert_hits,
                                              min(args.max_num_seqs, MAX_GRAPH_BATCH), max_model_len, args.block_size)
            self.mixed_graphs = MixedGraphs(self.model, self.kv_caches, self.expert_hits,
                                            min(mixed_rows, MAX_MIXED_GRAPH_TOKENS))
        if self.device.type == "cuda":
            self._compile_eager_kernels(self.mixed_graphs.max_rows if self.mixed_graphs else 0, mixed_rows)

    @torch.inference_mode()
    def _compile_eager_kernels(self, graphed_rows: int, max_rows: int) -> None:
        """Runs one layer of each kind at the token counts that run outside graphs, so that Triton
        compiles their kernel variants now and not under the first such batch, where a compile
        stalls every running request for seconds. Sizes themselves are not specialised on
        (kernels.common.jit_sized); what still differs by token count is the MoE tile config, one
        per power of two (the tuned tables' rungs). Writes only to the still unused cache.
        """
        max_rows = min(max_rows, self.num_blocks * self.block_size)
        counts = sorted(n for n in {1 << k for k in range(max_rows.bit_length())} | {max_rows} if n > graphed_rows)
        kinds = {type(layer.mlp): i for i, layer in enumerate(self.model.layers)}
        for n in counts:
            hidden, residual = torch.zeros(2, n, self.cfg.hidden_size, dtype=self.dtype, device=self.device)
            positions = torch.zeros(n, dtype=torch.long, device=self.device)
            tables = torch.arange(-(-n // self.block_size), dtype=torch.int32, device=self.device)
            meta = AttentionMetadata(
                query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=self.device),
                seq_lens=torch.tensor([n], dtype=torch.int32, device=self.device),
                block_tables=tables.view(1, -1),
                slot_mapping=torch.arange(n, device=self.device),
                max_query_len=n, max_seq_len=n,
            )
            for i in kinds.values():
                self.model.layers[i](hidden, residual, positions, self.kv_caches[i], meta,
                                     self.model.rotary.cos_sin, self.expert_hits)
        self.expert_hits.zero_()

    @property
    def devices(self) -> list[torch.device]:
        """Every device of the engine, the workers' included (for energy metering)."""
        if self.device.type != "cuda":
            return [self.device]
        return [torch.device("cuda", r) for r in range(self.tp.size)]

    def _num_kv_blocks(self) -> int:
        """Blocks from an explicit count, a byte budget, or (CUDA) the free memory left after the weights."""
        cfg, args = self.cfg, self.args
        kv_heads = self.model.layout.num_kv_heads
        block_bytes = 2 * cfg.num_layers * self.block_size * kv_heads * cfg.head_dim * self.dtype.itemsize
        if args.num_kv_blocks is not None:
            return args.num_kv_blocks
        if args.kv_cache_bytes is not None:
            budget = args.kv_cache_bytes
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            activations = args.max_num_batched_tokens * cfg.hidden_size * 64
            budget = free - total * (1 - args.gpu_memory_utilization) - activations
        else:
            budget = CPU_DEFAULT_KV_BYTES
        blocks = torch.tensor([max(int(budget // block_bytes), 0)], dtype=torch.int64)
        if self.tp.size > 1:  # every rank must hold the same block ids
            dist.all_reduce(blocks, op=dist.ReduceOp.MIN, group=self.tp.control)
        return int(blocks.item())

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        """Rank 0: one iteration of the plan, workers included; samples the plan's tokens."""
        start = time.perf_counter()
        inputs = step_inputs(plan)
        try:
            if self.workers is not None:
                self.workers.send(inputs)
            batch = self.build_batch(inputs)
            prepare_s = time.perf_counter() - start
            result = self.run(batch)
        except Exception as e:
            if self.workers is None:
                raise
            raise self.workers.explain(e)  # noqa: B904  (explain chains e itself)
        experts = int(self.expert_hits.sum().item()) if self.cfg.num_experts else 0
        seqs = plan.sample_seqs
        if result.logits is None:
            return StepResult([], experts, prepare_s)
        sampled = self.sampler(result.logits, [s.params for s in seqs], [s.generator for s in seqs],
                               [(s.prompt_token_ids, s.output_token_ids) for s in seqs])
        return StepResult(sampled.tokens.tolist(), experts, prepare_s, sampled.logprobs)

    @torch.inference_mode()
    def run(self, batch: ForwardBatch) -> ForwardResult:
        """Every rank: the forward pass; keeps the prefill rows that continue to the next group."""
        self.expert_hits.zero_()
        graphs = self.decode_graphs
        if graphs is not None and graphs.fits(batch.decode_ids.shape[0]):
            graphs.load(batch.decode_positions, batch.decode_meta)
        else:
            graphs = None
        result = self.model(batch, self.kv_caches, self.expert_hits, graphs, self.mixed_graphs)
        if len(batch.prefill_layers):
            self.carry = result.prefill_carry
        return result

    def build_batch(self, inputs: StepInputs) -> ForwardBatch:
        """Device tensors of one step (decode rows first), identical on every rank."""
        meta, decode_meta, positions = self._metadata(inputs)
        ids = torch.tensor(inputs.token_ids, dtype=torch.long, device=self.device)
        nd = inputs.num_decode
        has_prefill = len(inputs.prefill_layers) > 0
        carry = None
        if has_prefill and not inputs.first_group:
            carry = self.carry
            if inputs.carry_rows is not None:
                rows = torch.tensor(inputs.carry_rows, dtype=torch.long, device=self.device)
                carry = (carry[0].index_select(0, rows), carry[1].index_select(0, rows))
        return ForwardBatch(
            decode_ids=ids[:nd],
            decode_positions=positions[:nd],
            decode_meta=decode_meta,
            prefill_layers=inputs.prefill_layers,
            prefill_ids=ids[nd:] if inputs.first_group else None,
            prefill_hidden=carry[0] if carry else None,
            prefill_residual=carry[1] if carry else None,
            mixed_positions=positions if has_prefill else None,
            mixed_meta=meta if has_prefill else None,
            logits_rows=torch.tensor(inputs.logits_rows, dtype=torch.long, device=self.device),
        )

    def shutdown(self) -> None:
        """Stops the tensor-parallel workers (idempotent)."""
        if self.workers is not None:
            self.workers.stop()

    def _metadata(self, inputs: StepInputs) -> tuple[AttentionMetadata, AttentionMetadata | None, torch.Tensor]:
        """Metadata of all rows, and of the leading decode rows alone (views of the same tensors).

        Built with numpy and moved in two copies (one int32, one int64 buffer): per-op torch
        overhead on small CPU tensors would otherwise be a visible share of a decode step. Each
        part starts 16-byte aligned, as Triton compiles a kernel variant per pointer alignment.
        """
        bs, num_decode, entries = self.block_size, inputs.num_decode, len(inputs.starts)
        q_lens = np.asarray(inputs.q_lens, dtype=np.int64)
        starts = np.asarray(inputs.starts, dtype=np.int64)
        seq_lens = starts + q_lens
        width = max(max((len(t) for t in inputs.block_tables), default=0), 1)
        tables = np.zeros((entries, width), dtype=np.int32)
        for i, table in enumerate(inputs.block_tables):
            tables[i, : len(table)] = table
        query_start = np.zeros(entries + 1, dtype=np.int64)
        np.cumsum(q_lens, out=query_start[1:])
        seq_index = np.repeat(np.arange(entries), q_lens)
        positions = starts[seq_index] + np.arange(int(query_start[-1])) - query_start[:-1][seq_index]
        slots = tables[seq_index, positions // bs].astype(np.int64) * bs + positions % bs
        qsl, lens, flat_tables = _aligned_parts(
            self.device, query_start.astype(np.int32), seq_lens.astype(np.int32), tables.ravel())
        slot_mapping, positions_t = _aligned_parts(self.device, slots, positions)
        meta = AttentionMetadata(
            query_start_loc=qsl,
            seq_lens=lens,
            block_tables=flat_tables.view(entries, width),
            slot_mapping=slot_mapping,
            max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()),
        )
        decode_meta = None
        if num_decode:
            decode_meta = AttentionMetadata(
                query_start_loc=meta.query_start_loc[: num_decode + 1],
                seq_lens=meta.seq_lens[:num_decode],
                block_tables=meta.block_tables[:num_decode],
                slot_mapping=meta.slot_mapping[:num_decode],
                max_query_len=1,
                max_seq_len=int(seq_lens[:num_decode].max()),
            )
        return meta, decode_meta, positions_t


def _aligned_parts(device: torch.device, *parts: np.ndarray) -> list[torch.Tensor]:
    """One host-to-device copy of same-dtype arrays: a view per part, each starting at a 16-byte boundary."""
    step = 16 // parts[0].itemsize
    offsets, size = [], 0
    for part in parts:
        offsets.append(size)
        size += -(-len(part) // step) * step
    host = np.zeros(size, dtype=parts[0].dtype)
    for part, offset in zip(parts, offsets):
        host[offset: offset + len(part)] = part
    buffer = torch.from_numpy(host).to(device)
    return [buffer[offset: offset + len(part)] for part, offset in zip(parts, offsets)]


def step_inputs(plan: StepPlan) -> StepInputs:
    """Flattens a plan: decode entries, then the prefill chunks; logits rows per the plan's samples."""
    entries = [(s, s.num_computed, 1) for s in plan.decode]
    pre = plan.prefill
    has_prefill = pre is not None and bool(pre.chunks)
    if has_prefill:
        entries += [(c.seq, c.start, c.length) for c in pre.chunks]
    num_decode = len(plan.decode)
    rows = list(range(num_decode))
    if has_prefill and pre.on_last_group:
        offset = num_decode
        for c in pre.chunks:
            offset += c.length
            if c.completes:
                rows.append(offset - 1)
    layers = pre.layers if has_prefill else range(0)
    first_group = has_prefill and layers.start == 0
    return StepInputs(
        # Carried prefill rows enter as hidden states: their token ids are not needed.
        token_ids=[t for i, (seq, start, n) in enumerate(entries) if i < num_decode or first_group
                   for t in seq.token_ids(start, start + n)],
        starts=[start for _, start, _ in entries],
        q_lens=[n for _, _, n in entries],
        block_tables=[seq.block_table for seq, _, _ in entries],  # read before any sequence grows again
        num_decode=num_decode,
        prefill_layers=layers,
        carry_rows=pre.carry_rows if has_prefill else None,
        logits_rows=rows,
    )

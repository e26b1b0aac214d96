"""Owns the model, its KV cache and the sampler; turns a StepPlan into sampled tokens."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from laminar.config import EngineArgs, ModelConfig
from laminar.cuda_graphs import DecodeGraphs
from laminar.loader import load_dummy, load_safetensors
from laminar.models import ForwardBatch, Qwen3ForCausalLM
from laminar.ops import AttentionMetadata, get_ops
from laminar.sampler import Sampler
from laminar.scheduler import StepPlan
from laminar.sequence import Sequence

CPU_DEFAULT_KV_BYTES = 256 << 20
MAX_GRAPH_BATCH = 256  # larger decode batches run eagerly, where launch overhead matters less


@dataclass
class StepResult:
    tokens: list[int]          # one per plan.sample_seqs
    experts_touched: int       # sum over the MoE layers run of distinct experts their tokens hit
    prepare_s: float           # host time spent building the input tensors


class ModelRunner:
    def __init__(self, cfg: ModelConfig, args: EngineArgs, max_model_len: int) -> None:
        self.cfg, self.args = cfg, args
        self.device = args.resolved_device()
        self.dtype = args.resolved_dtype(self.device)
        self.block_size = args.block_size
        ops = get_ops(self.device)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                self.model = Qwen3ForCausalLM(cfg, ops, max_model_len)
        finally:
            torch.set_default_dtype(default_dtype)
        self.model.requires_grad_(False)
        if args.load_format == "dummy":
            load_dummy(self.model, args.seed)
        else:
            load_safetensors(self.model, args.model)
        self.num_blocks = self._num_kv_blocks()
        shape = (self.num_blocks, self.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=self.dtype, device=self.device),
             torch.zeros(shape, dtype=self.dtype, device=self.device))
            for _ in range(cfg.num_layers)
        ]
        self.expert_hits = torch.zeros(
            (max(self.model.num_moe_layers, 1), max(cfg.num_experts, 1)), dtype=torch.bool, device=self.device
        )
        self.sampler = Sampler()
        self.decode_graphs = None
        if self.device.type == "cuda" and not args.enforce_eager:
            self.decode_graphs = DecodeGraphs(self.model, self.kv_caches, self.expert_hits,
                                              min(args.max_num_seqs, MAX_GRAPH_BATCH), max_model_len, args.block_size)

    def _num_kv_blocks(self) -> int:
        """Blocks from an explicit count, a byte budget, or (CUDA) the free memory left after the weights."""
        cfg, args = self.cfg, self.args
        block_bytes = 2 * cfg.num_layers * self.block_size * cfg.num_kv_heads * cfg.head_dim * self.dtype.itemsize
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
        return max(int(budget // block_bytes), 0)

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        start = time.perf_counter()
        batch = self._prepare(plan)
        prepare_s = time.perf_counter() - start
        self.expert_hits.zero_()
        graphs = self.decode_graphs
        if graphs is not None and graphs.fits(len(plan.decode)):
            graphs.load(batch.decode_positions, batch.decode_meta)
        else:
            graphs = None
        result = self.model(batch, self.kv_caches, self.expert_hits, graphs)
        if plan.prefill is not None:
            plan.prefill.carry = result.prefill_carry
        experts = int(self.expert_hits.sum().item()) if self.cfg.num_experts else 0
        seqs = plan.sample_seqs
        if result.logits is None:
            return StepResult([], experts, prepare_s)
        tokens = self.sampler(result.logits, [s.params for s in seqs], [s.generator for s in seqs])
        return StepResult(tokens.tolist(), experts, prepare_s)

    def _prepare(self, plan: StepPlan) -> ForwardBatch:
        """Flattens the plan into token, position and KV-slot tensors (decode rows first)."""
        entries: list[tuple[Sequence, int, int]] = [(s, s.num_computed, 1) for s in plan.decode]
        pre = plan.prefill
        layers = plan.prefill_layers
        if pre is not None:
            entries += [(c.seq, c.start, c.length) for c in pre.chunks]
        num_decode = len(plan.decode)
        ids = [tok for seq, start, n in entries for tok in seq.token_ids(start, start + n)]
        meta, decode_meta, positions = self._metadata(entries, num_decode)
        ids_t = torch.tensor(ids, dtype=torch.long, device=self.device)
        has_prefill = pre is not None and bool(pre.chunks)
        rows = list(range(num_decode))
        if has_prefill and pre.on_last_group:
            offset = num_decode
            for c in pre.chunks:
                offset += c.length
                if c.completes:
                    rows.append(offset - 1)
        first_group = has_prefill and layers.start == 0
        carry = pre.carry if has_prefill and not first_group else None
        return ForwardBatch(
            decode_ids=ids_t[:num_decode],
            decode_positions=positions[:num_decode],
            decode_meta=decode_meta,
            prefill_layers=layers if has_prefill else range(0),
            prefill_ids=ids_t[num_decode:] if first_group else None,
            prefill_hidden=carry[0] if carry else None,
            prefill_residual=carry[1] if carry else None,
            mixed_positions=positions if has_prefill else None,
            mixed_meta=meta if has_prefill else None,
            logits_rows=torch.tensor(rows, dtype=torch.long, device=self.device),
        )

    def _metadata(
        self, entries: list[tuple[Sequence, int, int]], num_decode: int
    ) -> tuple[AttentionMetadata, AttentionMetadata | None, torch.Tensor]:
        """Metadata of all rows, and of the leading decode rows alone (a view of the same tensors)."""
        bs = self.block_size
        q_lens = torch.tensor([n for _, _, n in entries], dtype=torch.int64)
        starts = torch.tensor([start for _, start, _ in entries], dtype=torch.int64)
        seq_lens = starts + q_lens
        max_blocks = max((len(s.block_table) for s, _, _ in entries), default=0)
        tables = torch.zeros((len(entries), max(max_blocks, 1)), dtype=torch.int32)
        for i, (seq, _, _) in enumerate(entries):
            tables[i, : len(seq.block_table)] = torch.tensor(seq.block_table, dtype=torch.int32)
        seq_index = torch.repeat_interleave(torch.arange(len(entries)), q_lens)
        query_start = torch.zeros(len(entries) + 1, dtype=torch.int64)
        torch.cumsum(q_lens, 0, out=query_start[1:])
        positions = starts[seq_index] + torch.arange(int(q_lens.sum())) - query_start[:-1][seq_index]
        slots = tables[seq_index, positions // bs].long() * bs + positions % bs
        dev = self.device
        meta = AttentionMetadata(
            query_start_loc=query_start.to(torch.int32).to(dev),
            seq_lens=seq_lens.to(torch.int32).to(dev),
            block_tables=tables.to(dev),
            slot_mapping=slots.to(dev),
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
        return meta, decode_meta, positions.to(dev)

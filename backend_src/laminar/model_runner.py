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
from laminar.cost_model import PROFILE_SEQ_TOKENS, Profile
from laminar.cuda_graphs import DecodeGraphs, MixedGraphs
from laminar.distributed import ShardLayout, TensorParallel
from laminar.loader import load_dummy, load_safetensors
from laminar.layered_prefill import StepPlan, stretches
from laminar.models import ForwardBatch, Qwen3ForCausalLM
from laminar.models.qwen3 import ForwardResult, SegmentRows, Stretch
from laminar.ops import AttentionMetadata, get_ops
from laminar.outputs import TokenLogprobs
from laminar.sampler import Sampler
from laminar.step_inputs import SegmentInputs, StepInputs
from laminar.tp_worker import WorkerGroup

CPU_DEFAULT_KV_BYTES = 256 << 20
MAX_GRAPH_BATCH = 256  # larger decode batches run eagerly, where launch overhead matters less
MAX_MIXED_GRAPH_TOKENS = 2048  # larger mixed batches keep the GPU busier than the host's launches
PROFILE_DECODE_CONTEXT = (16, 2048)  # short and long context of the profiled decode steps
PROFILE_REPEATS = 3


@dataclass
class StepResult:
    tokens: list[int]          # one per plan.sample_seqs
    experts_touched: int       # sum over the MoE layers run of distinct experts their tokens hit
    prepare_s: float           # host time spent building and sending the inputs
    logprobs: list[TokenLogprobs | None] | None = None  # per sampled token, when any request asked


class ModelRunner:
    def __init__(self, cfg: ModelConfig, args: EngineArgs, max_model_len: int, tp: TensorParallel | None = None) -> None:
        """tp: given by a worker process; rank 0 (tp None) starts the workers itself when TP > 1."""
        self.cfg, self.args, self.max_model_len = cfg, args, max_model_len
        self.measured: Profile | None = None
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
        self.carry: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # batch id -> its rows between iterations
        self.sampler = Sampler()
        self.decode_graphs = self.mixed_graphs = None
        # Chunked steps hold at most the budget's tokens; layered ones the decodes besides.
        mixed_rows = max_step_rows(args)
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

    @torch.inference_mode()
    def profile(self) -> Profile:
        """Times synthetic steps on this device for the cost model (cached: engines sharing this
        runner share it). Writes only to the still unused cache; blocks wrap around the pool."""
        if self.measured is not None:
            return self.measured
        layers, rows = self.cfg.num_layers, max_step_rows(self.args)
        batches = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < self.args.max_num_seqs] + [self.args.max_num_seqs]
        short, long = PROFILE_DECODE_CONTEXT[0], min(PROFILE_DECODE_CONTEXT[1], self.max_model_len - 1)
        decode_s = [self._time(self._synthetic([short] * b, [1] * b)) / layers for b in batches]
        sizes = sorted({n for n in (1 << k for k in range(4, rows.bit_length())) if n < rows} | {rows})
        mixed_s = [self._time(self._synthetic(*_short_prompts(n))) / layers for n in sizes]
        b = min(64, self.args.max_num_seqs)
        extra = self._time(self._synthetic([long] * b, [1] * b)) - decode_s[batches.index(b)] * layers  # b is a rung
        context_s = max(extra, 0.0) / (layers * b * (long - short))
        # Prefill attention beyond the profiled short prompts: one long prompt against the same
        # tokens as short prompts (pairs within a chunk), and one chunk at a long context against
        # the same chunk alone (pairs with earlier tokens); kernels spend differently on the two.
        n = min(4096, rows, self.max_model_len - 1)
        as_short = mixed_s[sizes.index(n)] * layers if n in sizes else self._time(self._synthetic(*_short_prompts(n)))
        extra = self.time_prompt(n) - as_short
        pairs = n * (n + 1) / 2 - n * (PROFILE_SEQ_TOKENS + 1) / 2
        self_pair_s = max(extra, 0.0) / (layers * pairs) if pairs > 0 else 0.0
        q = min(512, rows)
        context = min(4096, self.max_model_len - 1 - q)
        extra = self._time(self._synthetic([q + context], [q])) - self.time_prompt(q)
        context_pair_s = max(extra, 0.0) / (layers * q * context) if context > 0 else 0.0
        self.measured = Profile(layers, tuple(batches), tuple(decode_s), tuple(sizes), tuple(mixed_s),
                                context_s, self_pair_s, context_pair_s)
        return self.measured

    def time_prompt(self, tokens: int) -> float:
        """Seconds of one pass of a prompt of this many tokens through every layer (nothing else in the step)."""
        return self._time(self._synthetic([tokens], [tokens]))

    def _synthetic(self, seq_lens: list[int], q_lens: list[int]) -> StepInputs:
        """A step of sequences with these lengths computing their last q_lens tokens: decodes
        (q_len 1), or one prefill segment across all layers."""
        bs, tables, next_block = self.block_size, [], 0
        for n in seq_lens:
            width = -(-n // bs)
            tables.append([(next_block + j) % self.num_blocks for j in range(width)])
            next_block += width
        decode = all(q == 1 for q in q_lens)
        rows = sum(q_lens)
        segments = [] if decode else [SegmentInputs(-1, len(seq_lens), range(self.cfg.num_layers), None)]
        # Distinct tokens, so that rows route to experts as real traffic does (equal rows would all
        # pick the same top-k experts and hide most of the MoE's weight reads).
        tokens = np.random.default_rng(rows).integers(0, self.cfg.vocab_size, rows).tolist()
        return StepInputs(
            token_ids=tokens, starts=[n - q for n, q in zip(seq_lens, q_lens)], q_lens=q_lens,
            block_tables=tables, num_decode=len(seq_lens) if decode else 0, segments=segments, carried=[],
            logits_rows=list(range(rows)) if decode else [rows - 1],
        )

    def _time(self, inputs: StepInputs) -> float:
        """Median wall time of the forward (inputs built and sent as in a real step)."""
        times = []
        for _ in range(PROFILE_REPEATS + 1):
            self.synchronize()
            start = time.perf_counter()
            if self.workers is not None:
                self.workers.send(inputs)
            self.run(self.build_batch(inputs), [])
            self.synchronize()
            times.append(time.perf_counter() - start)
        self.expert_hits.zero_()
        return sorted(times[1:])[len(times[1:]) // 2]

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
            result = self.run(batch, inputs.carried)
        except Exception as e:
            if self.workers is None:
                raise
            raise self.workers.explain(e)  # noqa: B904  (explain chains e itself)
        experts = int(self.expert_hits.sum().item()) if self.cfg.num_experts else 0
        seqs = plan.sample_seqs
        if result.logits is None:
            self.synchronize()  # the step's time must include its GPU work (the cost model learns from it)
            return StepResult([], experts, prepare_s)
        sampled = self.sampler(result.logits, [s.params for s in seqs], [s.generator for s in seqs],
                               [(s.prompt_token_ids, s.output_token_ids) for s in seqs])
        return StepResult(sampled.tokens.tolist(), experts, prepare_s, sampled.logprobs)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def run(self, batch: ForwardBatch, carried: list[int]) -> ForwardResult:
        """Every rank: the forward pass; keeps the rows of the batches that continue next iteration."""
        self.expert_hits.zero_()
        graphs = self.decode_graphs
        if graphs is not None and batch.decode_meta is not None and graphs.fits(batch.decode_ids.shape[0]):
            graphs.load(batch.decode_positions, batch.decode_meta)
        else:
            graphs = None
        result = self.model(batch, self.kv_caches, self.expert_hits, graphs, self.mixed_graphs)
        self.carry = {b: result.carry[b] if b in result.carry else self.carry[b] for b in carried}
        return result

    def build_batch(self, inputs: StepInputs) -> ForwardBatch:
        """Device tensors of one step, identical on every rank."""
        nd = inputs.num_decode
        ids = torch.tensor(inputs.token_ids, dtype=torch.long, device=self.device)
        stretches = self._stretches(inputs)
        # Decode rows alone need their own metadata only where some layers run them alone (not
        # in a chunked step, nor when a segment spans the whole stack).
        decode_alone = nd > 0 and any(not st.segments for st in stretches)
        decode_meta, decode_positions = self._metadata(inputs, range(nd)) if decode_alone else (None, None)
        entries, first, segments = nd, nd, []
        for seg in inputs.segments:
            rows = sum(inputs.q_lens[entries: entries + seg.num_entries])
            segments.append(self._segment_rows(seg, rows, ids[first: first + rows] if seg.first else None))
            first += rows if seg.first else 0
            entries += seg.num_entries
        return ForwardBatch(
            decode_ids=ids[:nd],
            decode_positions=decode_positions,
            decode_meta=decode_meta,
            segments=segments,
            stretches=stretches,
            logits_rows=torch.tensor(inputs.logits_rows, dtype=torch.long, device=self.device),
        )

    def _segment_rows(self, seg: SegmentInputs, rows: int, ids: torch.Tensor | None) -> SegmentRows:
        if ids is not None:
            return SegmentRows(seg.batch_id, seg.layers, rows, ids, None, None)
        hidden, residual = self.carry[seg.batch_id]
        if seg.carry_rows is not None:
            keep = torch.tensor(seg.carry_rows, dtype=torch.long, device=self.device)
            hidden, residual = hidden.index_select(0, keep), residual.index_select(0, keep)
        return SegmentRows(seg.batch_id, seg.layers, rows, None, hidden, residual)

    def _stretches(self, inputs: StepInputs) -> list[Stretch]:
        """Stretches of the stack with their rows' metadata (built once per distinct set of segments)."""
        bounds, entry = [], inputs.num_decode
        for seg in inputs.segments:
            bounds.append(range(entry, entry + seg.num_entries))
            entry += seg.num_entries
        built: dict[tuple[int, ...], tuple[AttentionMetadata, torch.Tensor]] = {}
        out = []
        for layers, active in stretches(self.cfg.num_layers, [seg.layers for seg in inputs.segments]):
            if active and active not in built:
                chosen = [i for i in range(inputs.num_decode)] + [e for j in active for e in bounds[j]]
                built[active] = self._metadata(inputs, chosen)
            meta, positions = built.get(active, (None, None))
            out.append(Stretch(layers, active, positions, meta))
        return out

    def shutdown(self) -> None:
        """Stops the tensor-parallel workers (idempotent)."""
        if self.workers is not None:
            self.workers.stop()

    def _metadata(self, inputs: StepInputs, entries) -> tuple[AttentionMetadata, torch.Tensor]:
        """Attention metadata and positions of the rows of these entries, in order.

        Built with numpy and moved in two copies (one int32, one int64 buffer): per-op torch
        overhead on small CPU tensors would otherwise be a visible share of a decode step. Each
        part starts 16-byte aligned, as Triton compiles a kernel variant per pointer alignment.
        """
        entries = list(entries)
        bs, count = self.block_size, len(entries)
        q_lens = np.asarray([inputs.q_lens[e] for e in entries], dtype=np.int64)
        starts = np.asarray([inputs.starts[e] for e in entries], dtype=np.int64)
        seq_lens = starts + q_lens
        width = max(max((len(inputs.block_tables[e]) for e in entries), default=0), 1)
        tables = np.zeros((count, width), dtype=np.int32)
        for i, e in enumerate(entries):
            table = inputs.block_tables[e]
            tables[i, : len(table)] = table
        query_start = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(q_lens, out=query_start[1:])
        seq_index = np.repeat(np.arange(count), q_lens)
        positions = starts[seq_index] + np.arange(int(query_start[-1])) - query_start[:-1][seq_index]
        slots = tables[seq_index, positions // bs].astype(np.int64) * bs + positions % bs
        qsl, lens, flat_tables = _aligned_parts(
            self.device, query_start.astype(np.int32), seq_lens.astype(np.int32), tables.ravel())
        slot_mapping, positions_t = _aligned_parts(self.device, slots, positions)
        meta = AttentionMetadata(
            query_start_loc=qsl,
            seq_lens=lens,
            block_tables=flat_tables.view(count, width),
            slot_mapping=slot_mapping,
            max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()),
        )
        return meta, positions_t


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


def max_step_rows(args: EngineArgs) -> int:
    """Rows a step can hold: the prefill token budget, plus the decodes in layered mode (chunked
    mode counts decodes inside the budget)."""
    return args.max_num_batched_tokens + (args.max_num_seqs if args.schedule_mode == "layered" else 0)


def _short_prompts(tokens: int) -> tuple[list[int], list[int]]:
    """Sequence and query lengths of `tokens` prompt tokens cut into PROFILE_SEQ_TOKENS-long prompts."""
    full, rest = divmod(tokens, PROFILE_SEQ_TOKENS)
    lens = [PROFILE_SEQ_TOKENS] * full + ([rest] if rest else [])
    return lens, lens


def step_inputs(plan: StepPlan) -> StepInputs:
    """Flattens a plan: decode entries, then each segment's chunks; logits rows per the plan's samples."""
    entries = [(s, s.num_computed, 1) for s in plan.decode]
    token_ids = [s.token_ids(s.num_computed, s.num_computed + 1)[0] for s in plan.decode]
    segments, logits_rows = [], list(range(len(plan.decode)))
    offset = len(plan.decode)
    for seg in plan.segments:
        entries += [(c.seq, c.start, c.length) for c in seg.chunks]
        if seg.layers.start == 0:  # carried rows enter as hidden states: their token ids are not needed
            token_ids += [t for c in seg.chunks for t in c.seq.token_ids(c.start, c.start + c.length)]
        rows = list(seg.carry_rows) if seg.carry_rows is not None else None
        segments.append(SegmentInputs(seg.batch_id, len(seg.chunks), seg.layers, rows))
        if seg.finishes:
            logits_rows += seg.logits_rows(offset)
            offset += seg.num_tokens
    return StepInputs(
        token_ids=token_ids,
        starts=[start for _, start, _ in entries],
        q_lens=[n for _, _, n in entries],
        block_tables=[seq.block_table for seq, _, _ in entries],  # read before any sequence grows again
        num_decode=len(plan.decode),
        segments=segments,
        carried=list(plan.carried),
        logits_rows=logits_rows,
    )

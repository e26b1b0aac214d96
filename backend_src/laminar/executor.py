"""Rank 0's side of a step: the plan flattened to StepInputs, sent to the tensor-parallel workers,
run on this rank's ModelRunner, and sampled. Also times the synthetic steps of the start-up
profile the cost model learns from.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from laminar.config import EngineArgs, ModelConfig
from laminar.cost_model import PROFILE_SEQ_TOKENS, Profile
from laminar.distributed import ShardLayout, TensorParallel
from laminar.layered_prefill import StepPlan
from laminar.model_runner import ModelRunner, max_step_rows
from laminar.outputs import TokenLogprobs
from laminar.prompt_logprobs import collect_prompt_logprobs, prompt_spans
from laminar.sampler import Sampler
from laminar.step_inputs import SegmentInputs, StepInputs
from laminar.structured_output import BitmaskBuffer, GrammarMask
from laminar.tp_worker import WorkerGroup

PROFILE_DECODE_CONTEXT = (16, 2048)  # short and long context of the profiled decode steps
PROFILE_REPEATS = 3


@dataclass
class StepResult:
    tokens: list[int]          # one per plan.sample_seqs
    experts_touched: int       # sum over the MoE layers run of distinct experts their tokens hit
    prepare_s: float           # host time spent building and sending the inputs
    logprobs: list[TokenLogprobs | None] | None = None  # per sampled token, when any request asked


class Executor:
    """Starts the workers (TP > 1), owns rank 0's ModelRunner and the sampler."""

    def __init__(self, cfg: ModelConfig, args: EngineArgs, max_model_len: int) -> None:
        self.cfg, self.args, self.max_model_len = cfg, args, max_model_len
        self.workers: WorkerGroup | None = None
        tp = TensorParallel()
        if args.tensor_parallel_size > 1:
            ShardLayout.of(cfg, TensorParallel(0, args.tensor_parallel_size))  # shape errors before any spawn
            self.workers = WorkerGroup(args, max_model_len)
            tp = self.workers.tp
        try:
            self.runner = ModelRunner(cfg, args, max_model_len, tp)
        except BaseException:
            self.shutdown()
            raise
        self.sampler = Sampler()
        self.bitmasks = BitmaskBuffer(pinned=self.runner.device.type == "cuda")
        self.measured: Profile | None = None

    @property
    def devices(self) -> list[torch.device]:
        """Every device of the engine, the workers' included (for energy metering)."""
        device = self.runner.device
        if device.type != "cuda":
            return [device]
        return [torch.device("cuda", r) for r in range(self.runner.tp.size)]

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepResult:
        """One iteration of the plan, workers included; samples the plan's tokens (their grammars'
        masks applied first) and collects the prompt logprobs the plan's prompt rows owe."""
        start = time.perf_counter()
        inputs = plan_inputs(plan)
        spans = prompt_spans(plan)
        inputs.logits_rows += [row for span in spans for row in span.rows]  # after the sampled rows
        try:
            if self.workers is not None:
                self.workers.send(inputs)
            batch = self.runner.build_batch(inputs)
            prepare_s = time.perf_counter() - start
            result = self.runner.run(batch, inputs.carried)
        except Exception as e:
            if self.workers is None:
                raise
            raise self.workers.explain(e)  # noqa: B904  (explain chains e itself)
        seqs = plan.sample_seqs
        mask = GrammarMask([s.grammar for s in seqs], self.cfg.vocab_size, self.bitmasks)  # while the device works
        experts = int(self.runner.expert_hits.sum().item()) if self.cfg.num_experts else 0
        if result.logits is None or not seqs:
            if result.logits is not None:
                collect_prompt_logprobs(result.logits, spans)
            self.runner.synchronize()  # the step's time must include its GPU work (the cost model learns from it)
            return StepResult([], experts, prepare_s)
        logits = result.logits[:len(seqs)]
        collect_prompt_logprobs(result.logits[len(seqs):], spans)
        mask.apply(logits)
        sampled = self.sampler(logits, [s.params for s in seqs], [s.generator for s in seqs],
                               [(s.prompt_token_ids, s.output_token_ids) for s in seqs])
        return StepResult(sampled.tokens.tolist(), experts, prepare_s, sampled.logprobs)

    def shutdown(self) -> None:
        """Stops the tensor-parallel workers (idempotent)."""
        if self.workers is not None:
            self.workers.stop()

    @torch.inference_mode()
    def profile(self) -> Profile:
        """Times synthetic steps on this device for the cost model (cached: engines sharing this
        executor share it). Writes only to the still unused cache; blocks wrap around the pool."""
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
        bs, num_blocks, tables, next_block = self.runner.block_size, self.runner.num_blocks, [], 0
        for n in seq_lens:
            width = -(-n // bs)
            tables.append([(next_block + j) % num_blocks for j in range(width)])
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
            self.runner.synchronize()
            start = time.perf_counter()
            if self.workers is not None:
                self.workers.send(inputs)
            self.runner.run(self.runner.build_batch(inputs), [])
            self.runner.synchronize()
            times.append(time.perf_counter() - start)
        self.runner.expert_hits.zero_()
        return sorted(times[1:])[len(times[1:]) // 2]


def _short_prompts(tokens: int) -> tuple[list[int], list[int]]:
    """Sequence and query lengths of `tokens` prompt tokens cut into PROFILE_SEQ_TOKENS-long prompts."""
    full, rest = divmod(tokens, PROFILE_SEQ_TOKENS)
    lens = [PROFILE_SEQ_TOKENS] * full + ([rest] if rest else [])
    return lens, lens


def plan_inputs(plan: StepPlan) -> StepInputs:
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

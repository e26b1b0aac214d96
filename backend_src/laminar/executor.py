"""Rank 0's side of a step: the plan flattened to StepInputs, sent to the worker ranks (tensor and
pipeline parallel), run on this rank's ModelRunner, and sampled. The start-up profile the cost
model learns from is the profiler's (executor.profiler).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from laminar.config import EngineArgs, ModelConfig
from laminar.distributed import Distributed, ShardLayout, TensorParallel
from laminar.model_runner import ModelRunner
from laminar.outputs import TokenLogprobs
from laminar.profiler import Profiler
from laminar.prompt_logprobs import collect_prompt_logprobs, prompt_spans
from laminar.sampler import Sampler
from laminar.step_inputs import SegmentInputs, StepInputs
from laminar.step_plan import StepPlan, stacked
from laminar.structured_output import BitmaskBuffer, GrammarMask
from laminar.worker_group import WorkerGroup


@dataclass
class StepResult:
    tokens: list[int]          # one per plan.sample_seqs
    experts_touched: int       # sum over the MoE layers run of distinct experts their tokens hit
    prepare_s: float           # host time spent building and sending the inputs
    logprobs: list[TokenLogprobs | None] | None = None  # per sampled token, when any request asked


class Executor:
    """Starts the workers (more than one rank), owns rank 0's ModelRunner and the sampler."""

    def __init__(self, cfg: ModelConfig, args: EngineArgs, max_model_len: int) -> None:
        self.cfg, self.args, self.max_model_len = cfg, args, max_model_len
        self.workers: WorkerGroup | None = None
        group = Distributed()
        if args.world_size > 1:
            ShardLayout.of(cfg, TensorParallel(0, args.tensor_parallel_size))  # shape errors before any spawn
            if args.pipeline_parallel_size > cfg.num_layers:
                raise ValueError(f"pipeline_parallel_size {args.pipeline_parallel_size} exceeds the model's "
                                 f"{cfg.num_layers} layers")
            self.workers = WorkerGroup(args, max_model_len)
            group = self.workers.group
        try:
            self.runner = ModelRunner(cfg, args, max_model_len, group)
        except BaseException:
            self.shutdown()
            raise
        self.sampler = Sampler()
        self.profiler = Profiler(self.runner, self.workers, args, max_model_len)
        self.bitmasks = BitmaskBuffer(pinned=self.runner.device.type == "cuda")

    @property
    def devices(self) -> list[torch.device]:
        """Every device of the engine on this node, the local workers' included (for energy metering)."""
        device = self.runner.device
        if device.type != "cuda":
            return [device]
        return [torch.device("cuda", r) for r in range(self.args.local_world_size or self.args.world_size)]

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
        experts = int(result.experts_touched.item()) if self.cfg.num_experts else 0
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
        """Stops the workers (idempotent)."""
        if self.workers is not None:
            self.workers.stop()


def plan_inputs(plan: StepPlan) -> StepInputs:
    """Flattens a plan in its row order (step_plan.stacked): decode entries, then each segment's
    chunks; the logits rows are the plan's."""
    decode = [(s, s.num_computed, 1) for s in plan.decode]
    chunks = [[(c.seq, c.start, c.length) for c in seg.chunks] for seg in plan.segments]
    entries = [e for part in stacked(decode, chunks) for e in part]
    # Carried rows enter as hidden states: only segments starting at layer 0 need their token ids.
    ids = [[seq.token_ids(start, start + n) for seq, start, n in part]
           for part in stacked(decode, [c if seg.layers.start == 0 else [] for seg, c in zip(plan.segments, chunks)])]
    token_ids = [t for part in ids for tokens in part for t in tokens]
    segments = [SegmentInputs(seg.batch_id, len(seg.chunks), seg.layers,
                              list(seg.carry_rows) if seg.carry_rows is not None else None) for seg in plan.segments]
    return StepInputs(
        token_ids=token_ids,
        starts=[start for _, start, _ in entries],
        q_lens=[n for _, _, n in entries],
        block_tables=[seq.block_table for seq, _, _ in entries],  # read before any sequence grows again
        num_decode=len(plan.decode),
        segments=segments,
        carried=list(plan.carried),
        logits_rows=plan.logits_rows(),
    )

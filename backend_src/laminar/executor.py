"""Rank 0's side of a step: the plan flattened to StepInputs, sent to the worker ranks (tensor and
pipeline parallel), run on this rank's ModelRunner, and sampled. The start-up profile the cost
model learns from is the profiler's (executor.profiler).

A step is three calls, none of which waits for the device until the last: launch (the forward is
queued), sample (the sampling is queued, the tokens' copy to the host started), and
PendingResult.result (the host reads them). Asynchronous scheduling (laminar.engine) plans and
launches the next step between the second and the third.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from laminar.config import EngineArgs, ModelConfig
from laminar.device_idle import IdleClock, idle_seconds
from laminar.distributed import Distributed, ShardLayout, TensorParallel
from laminar.model_runner import ModelRunner
from laminar.outputs import TokenLogprobs
from laminar.profiler import Profiler
from laminar.prompt_logprobs import PromptSpan, collect_prompt_logprobs, prompt_spans
from laminar.sampler import Sampler
from laminar.sequence import Sequence, Status
from laminar.step_inputs import SegmentInputs, StepInputs
from laminar.step_plan import StepPlan, stacked
from laminar.structured_output import BitmaskBuffer, GrammarMask
from laminar.worker_group import WorkerGroup


@dataclass
class StepResult:
    tokens: list[int]          # one per sampled row (Forward.seqs)
    experts_touched: int       # sum over the MoE layers run of distinct experts their tokens hit
    prepare_s: float           # host time spent building and sending the inputs
    logprobs: list[TokenLogprobs | None] | None = None  # per sampled token, when any request asked
    device_idle_s: float | None = None  # the device waiting for the host within the step (device_idle; CUDA)


@dataclass
class Forward:
    """A step's forward, queued on the device; nothing of it has been read back yet."""

    seqs: list[Sequence]       # plan.sample_seqs: their logits rows come first
    logits: torch.Tensor | None
    spans: list[PromptSpan]    # prompt rows owed prompt logprobs, after the sampled rows
    experts: torch.Tensor      # distinct experts hit, summed over the MoE layers run (device scalar)
    prepare_s: float
    share: bool                # the sampled tokens stay on every rank's device for the next step
    marks: list                # device_idle marks: the previous step's end, the forward's start and end


class PendingResult:
    """A step's sampled tokens and expert count on their way to the host: one non-blocking copy
    and an event, so that the host waits only when it reads them (result)."""

    def __init__(self, tokens: torch.Tensor | None, experts: torch.Tensor, prepare_s: float,
                 logprobs: list[TokenLogprobs | None] | None, marks: list, clock: IdleClock) -> None:
        values = experts.view(1) if tokens is None else torch.cat([tokens, experts.view(1)])
        if values.device.type == "cuda":
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
        else:
            self.host = values
        self.event = clock.mark()  # the step's end
        clock.last_end = self.event
        self.prepare_s, self.logprobs, self.marks = prepare_s, logprobs, marks

    def result(self) -> StepResult:
        """Waits for the copy (the step's device work is done then) and reads it."""
        if self.event is not None:
            self.event.synchronize()
        *tokens, experts = self.host.tolist()
        return StepResult(tokens, experts, self.prepare_s, self.logprobs, idle_seconds(self.marks))


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
        self.clock = IdleClock(self.runner.device)

    @property
    def devices(self) -> list[torch.device]:
        """Every device of the engine on this node, the local workers' included (for energy metering)."""
        device = self.runner.device
        if device.type != "cuda":
            return [device]
        return [torch.device("cuda", r) for r in range(self.args.local_world_size or self.args.world_size)]

    @torch.inference_mode()
    def launch(self, plan: StepPlan, share: bool) -> Forward:
        """Queues the plan's forward on every rank and returns without waiting for the device.
        share: the step's sampled tokens are kept on every rank's device, where the next step's
        pending token ids read them (asynchronous scheduling)."""
        start = time.perf_counter()
        inputs = plan_inputs(plan)
        spans = prompt_spans(plan)
        inputs.logits_rows += [row for span in spans for row in span.rows]  # after the sampled rows
        seqs = plan.sample_seqs
        inputs.num_sampled = len(seqs) if share else 0
        try:
            if self.workers is not None:
                self.workers.send(inputs)
            batch = self.runner.build_batch(inputs)
            prepare_s = time.perf_counter() - start
            marks = [self.clock.last_end, self.clock.mark()]
            result = self.runner.run(batch, inputs.carried)
        except Exception as e:
            if self.workers is None:
                raise
            raise self.workers.explain(e)  # noqa: B904  (explain chains e itself)
        experts = result.experts_touched  # this rank's hits and the other stages', on the device
        marks.append(self.clock.mark())
        return Forward(seqs, result.logits, spans, experts, prepare_s, inputs.num_sampled > 0, marks)

    @torch.inference_mode()
    def sample(self, forward: Forward) -> PendingResult:
        """Samples the forward's rows, their grammars' masks applied first (filled on the host
        while the device still runs the forward), and starts the copy of the tokens to the host.

        A row whose sequence has finished since the step was planned (asynchronous scheduling:
        its stop token arrived meanwhile) is sampled unconstrained and its token discarded. Prompt
        logprobs are read back at once: a step that owes them waits for its device work here.
        """
        seqs, tokens, logprobs = forward.seqs, None, None
        marks = [*forward.marks, self.clock.mark()]
        if seqs:
            mask = GrammarMask([s.grammar if s.status != Status.FINISHED else None for s in seqs],
                               self.cfg.vocab_size, self.bitmasks)
            logits = forward.logits[:len(seqs)]
            mask.apply(logits)
            sampled = self.sampler(logits, [s.params for s in seqs], [s.generator for s in seqs],
                                   [(s.prompt_token_ids, s.output_token_ids) for s in seqs])
            tokens, logprobs = sampled.tokens, sampled.logprobs
        if forward.share:
            self.runner.share_sampled(tokens, len(seqs))
        pending = PendingResult(tokens, forward.experts, forward.prepare_s, logprobs, marks, self.clock)
        if forward.logits is not None:
            collect_prompt_logprobs(forward.logits[len(seqs):], forward.spans)
        return pending

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

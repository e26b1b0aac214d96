"""The step-level engine: requests in, one scheduler iteration per step(), deltas out.

Not thread-safe: one thread owns it (the Triton model's engine loop, or LLM).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from laminar.block_manager import BlockManager
from laminar.config import EngineArgs, ModelConfig
from laminar.cost_model import CostModel
from laminar.energy import EnergyMeter
from laminar.executor import Executor, PendingResult, StepResult
from laminar.outputs import EngineStats, RequestOutput, SegmentRecord, StepRecord, TokenLogprobs
from laminar.sampler import make_generator
from laminar.sampling_params import SamplingParams
from laminar.scheduler import Scheduler
from laminar.sequence import Sequence, Status, pending_token
from laminar.step_plan import StepPlan, StepShape
from laminar.structured_output import GrammarCompiler, GrammarState
from laminar.tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer

logger = logging.getLogger(__name__)
PREEMPTION_WINDOW = 100      # steps over which repeated preemption is noticed
PREEMPTION_WARN_COUNT = 8    # preemptions within the window that earn a warning
PREEMPTION_WARN_EVERY_S = 30.0
GRAMMAR_WAIT_S = 0.05  # an idle step waits this long at most for a grammar being compiled


@dataclass
class InFlight:
    """A launched step whose sampled tokens have not been read: its sequences hold placeholders."""

    plan: StepPlan
    seqs: list[Sequence]       # one per sampled row, in row order
    result: PendingResult
    start: float               # perf_counter at the start of the step() that launched it


class LLMEngine:
    def __init__(self, args: EngineArgs, executor: Executor | None = None, cost: CostModel | None = None) -> None:
        """executor: reuse another engine's model and KV cache (benchmarks compare modes on one set of
        weights). cost: the step-time model the SLO policy plans with; by default, with prefill_policy 'slo',
        one built from a profile of this executor's model, learning online."""
        logger.info("engine arguments: %s", args)
        self.args = args
        self.async_scheduling = args.resolved_async_scheduling(args.resolved_device())
        self.model_config = cfg = ModelConfig.from_dir(args.model)
        self.max_model_len = args.max_model_len or cfg.max_position_embeddings
        if self.max_model_len > cfg.max_position_embeddings:
            raise ValueError(
                f"max_model_len {self.max_model_len} exceeds the model's max_position_embeddings "
                f"{cfg.max_position_embeddings}"
            )
        torch.manual_seed(args.seed)
        self.tokenizer: Tokenizer | None = load_tokenizer(args.model) if _has_tokenizer(args.model) else None
        self.eos_token_ids = set(self.tokenizer.eos_token_ids) if self.tokenizer else set(cfg.eos_token_id)
        self.owns_executor = executor is None
        self.executor = executor or Executor(cfg, args, self.max_model_len)
        try:
            if cost is None and args.prefill_policy == "slo":
                cost = CostModel(self.executor.profiler.profile())
            self.cost = cost
            self._init_state(args, cfg)
        except BaseException:
            if self.owns_executor:  # do not leave TP workers behind a failed construction
                self.executor.shutdown()
            raise

    def _init_state(self, args: EngineArgs, cfg: ModelConfig) -> None:
        self.blocks = BlockManager(self.executor.runner.num_blocks, args.block_size, args.enable_prefix_caching)
        if self.executor.runner.num_blocks * args.block_size < self.max_model_len:
            raise ValueError(
                f"the KV cache holds {self.executor.runner.num_blocks * args.block_size} tokens, fewer than "
                f"max_model_len {self.max_model_len}: raise the KV memory or lower max_model_len"
            )
        self.scheduler = Scheduler(args, cfg.num_layers, self.blocks, self.cost)
        self.expert_bytes = self.executor.runner.model.expert_bytes()
        self.seqs: dict[str, Sequence] = {}       # each request's sample 0, until all its samples finish
        self.forks: dict[str, list[Sequence]] = {}  # samples 1.. of n > 1 requests
        self.unfinished: dict[str, int] = {}        # samples of each request still running
        self.compiling: dict[str, Future] = {}      # requests waiting for their grammar, out of the scheduler
        self.grammars: GrammarCompiler | None = None  # started by the first structured request
        self.stats = EngineStats(kv_blocks_total=self.executor.runner.num_blocks)
        self.last_step: StepRecord | None = None
        self.energy = EnergyMeter(self.executor.devices)
        self.energy_start = self.energy.read_joules()
        self.cycle: tuple[StepShape, float] | None = None  # the last step's shape and start, until the next starts
        self.in_flight: InFlight | None = None  # the step launched, its tokens not read yet
        self.recent_preemptions: deque[int] = deque(maxlen=PREEMPTION_WINDOW)
        self.last_preemption_warning = -PREEMPTION_WARN_EVERY_S

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams, arrival_time: float | None = None
    ) -> None:
        """Queues a request; raises ValueError naming the problem, leaving the engine untouched."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError("request_id must be a non-empty string")
        if request_id in self.seqs:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if not isinstance(params, SamplingParams):
            raise ValueError("params must be a SamplingParams")
        prompt_ids = self._prompt_ids(prompt)
        self._check_params(params)
        seq = self._sequence(request_id, prompt_ids, params, 0,
                             time.monotonic() if arrival_time is None else arrival_time)
        self.seqs[request_id] = seq
        self.unfinished[request_id] = params.n
        if params.structured_outputs is None:
            self.scheduler.add(seq)
            return
        if self.grammars is None:
            self.grammars = GrammarCompiler(self.args.model, self.model_config.vocab_size, sorted(self.eos_token_ids))
        self.compiling[request_id] = self.grammars.submit(params.structured_outputs)

    def _check_params(self, params: SamplingParams) -> None:
        """What depends on the model: the tokenizer, the vocabulary."""
        if params.stop and self.tokenizer is None:
            raise ValueError("stop: stop strings need a model with a tokenizer.json")
        if params.structured_outputs is not None and self.tokenizer is None:
            raise ValueError("structured_outputs: a grammar needs a model with a tokenizer.json")
        vocab = self.model_config.vocab_size
        bad = [t for t in params.logit_bias or {} if t >= vocab]
        if bad:
            raise ValueError(f"logit_bias: token ids must be in [0, {vocab}), got {bad[:4]}")
        if params.n > self.args.max_num_seqs:
            raise ValueError(f"n: {params.n} samples exceed max_num_seqs {self.args.max_num_seqs}")
        order = self.args.prefill_order
        if params.priority != 0 and order != "priority":
            raise ValueError(f"priority: this server admits prompts in {order!r} order; priorities need "
                             "prefill_order 'priority'")
        if params.ttft_slo_ms is not None and order != "deadline":
            raise ValueError(f"ttft_slo_ms: this server admits prompts in {order!r} order; TTFT budgets need "
                             "prefill_order 'deadline'")

    def _sequence(self, request_id: str, prompt_ids: list[int], params: SamplingParams, index: int,
                  arrival_time: float) -> Sequence:
        """Sample `index` of a request: its own detokenizer and random stream."""
        detok = (
            IncrementalDetokenizer(self.tokenizer, prompt_ids, params.stop, params.skip_special_tokens)
            if self.tokenizer else None
        )
        return Sequence(
            request_id=request_id,
            prompt_token_ids=prompt_ids,
            params=params,
            generator=make_generator(params.seed, self.executor.runner.device),
            detokenizer=detok,
            arrival_time=arrival_time,
            index=index,
        )

    def _start_compiled(self) -> list[RequestOutput]:
        """Requests whose grammar is compiled join the scheduler; an invalid grammar ends its request."""
        failed = []
        for request_id, future in list(self.compiling.items()):
            if not future.done():
                continue
            del self.compiling[request_id]
            seq = self.seqs[request_id]
            try:
                seq.grammar = GrammarState(future.result())
            except Exception as e:  # ValueError: the client's grammar; anything else must not stop the engine
                logger.log(logging.INFO if isinstance(e, ValueError) else logging.ERROR, "grammar of %s: %s",
                           request_id, e)
                message = str(e) if isinstance(e, ValueError) else f"structured_outputs: {type(e).__name__}: {e}"
                self._drop(request_id)
                failed.append(_failed(seq, message))
                continue
            self.scheduler.add(seq)
        return failed

    def _fork(self, parent: Sequence) -> None:
        """Samples 1..n-1 of parent's request, once parent's prompt is computed: they share its KV."""
        children = []
        for i in range(1, parent.params.n):
            child = self._sequence(parent.request_id, parent.prompt_token_ids, parent.params.for_sample(i), i,
                                   parent.arrival_time)
            child.grammar = parent.grammar.fork() if parent.grammar else None
            self.scheduler.fork(parent, child)
            children.append(child)
        self.forks[parent.request_id] = children

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: this model has no tokenizer.json; send token ids")
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            vocab = self.model_config.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt: token ids must be in [0, {vocab}), got {bad[:4]}")
        else:
            raise ValueError("prompt must be a string or a list of token ids")
        if not ids:
            raise ValueError("prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(ids)} tokens, but max_model_len is {self.max_model_len} "
                "(at least one token must be generated)"
            )
        return ids

    def abort(self, request_id: str) -> bool:
        """Drops a request wherever it is (compiling its grammar, queued, mid-prefill at any group,
        decoding), every sample of it, and frees their blocks."""
        if request_id not in self.seqs:
            return False
        for seq in self._drop(request_id):
            if seq.status != Status.FINISHED:
                self.scheduler.remove(seq)
                seq.status, seq.finish_reason = Status.FINISHED, "abort"
        return True

    def _drop(self, request_id: str) -> list[Sequence]:
        """Forgets a request; returns its samples."""
        self.compiling.pop(request_id, None)
        self.unfinished.pop(request_id, None)
        return [self.seqs.pop(request_id)] + self.forks.pop(request_id, [])

    def has_unfinished_requests(self) -> bool:
        """Requests not finished, or a step whose tokens are still to be read (async_scheduling)."""
        return bool(self.seqs) or self.in_flight is not None

    def step(self) -> list[RequestOutput]:
        """Runs one iteration and returns the requests that got a token in it.

        With async_scheduling the tokens returned are the previous iteration's: this one is
        planned and launched first, so the device runs it while the host reads, detokenizes and
        checks the previous one's tokens (which this one's pending token ids read on the device).
        """
        start = time.perf_counter()
        if self.cycle is not None:  # the last step's decodes waited from its start to this one's
            self.cost.observe(self.cycle[0], start - self.cycle[1])
            self.scheduler.observe(self.cycle[0], start - self.cycle[1])
            self.cycle = None
        failed = self._start_compiled() if self.compiling else []
        plan = self.scheduler.schedule()
        self._note_preemptions(len(plan.preempted))
        if plan.is_empty:
            outputs = failed + self._resolve(start, 0.0)
            if self.compiling and not outputs:  # nothing to run but grammars being compiled
                wait(list(self.compiling.values()), GRAMMAR_WAIT_S, FIRST_COMPLETED)
            return outputs
        now = time.monotonic()
        for seq in (chunk.seq for seg in plan.segments for chunk in seg.chunks):
            if seq.admitted_time is None:
                seq.admitted_time = now
                self._count_lookup(seq)
        launch_start = time.perf_counter()
        forward = self.executor.launch(plan, share=self.async_scheduling)
        device_s = time.perf_counter() - launch_start - forward.prepare_s
        self.scheduler.advance(plan)
        outputs = failed + self._resolve(start, device_s)  # async: the previous step, while this one runs
        sample_start = time.perf_counter()
        self.in_flight = InFlight(plan, forward.seqs, self.executor.sample(forward), start)
        device_s += time.perf_counter() - sample_start
        for row, seq in enumerate(forward.seqs):
            if seq.status != Status.FINISHED:  # finished while this step was planned: its row is dropped
                seq.output_token_ids.append(pending_token(row))
        if not self.async_scheduling or not self.seqs:  # nothing left to overlap with: read it now
            outputs += self._resolve(start, device_s)
        return outputs

    def _resolve(self, start: float, device_s: float) -> list[RequestOutput]:
        """Reads the tokens of the step in flight (waiting for the device if it still runs it) in
        place of their placeholders, and accounts the step. Rows of sequences that finished or
        were aborted since the step was planned are dropped. device_s: this call's time in the
        executor so far (launching and sampling), which is not host overhead."""
        step, self.in_flight = self.in_flight, None
        if step is None:
            self.last_step = None
            return []
        wait_start = time.perf_counter()
        result = step.result.result()
        device_s += time.perf_counter() - wait_start
        done = time.monotonic()
        logprobs = result.logprobs or [None] * len(step.seqs)
        rows = [(seq, token, lp) for seq, token, lp in zip(step.seqs, result.tokens, logprobs)
                if seq.status != Status.FINISHED]
        outputs = [self._append(seq, token, lp, done) for seq, token, lp in rows]
        total_s = time.perf_counter() - start
        self._learn(step.plan, start, time.perf_counter() - step.start)
        self._account(step.plan, [seq for seq, _, _ in rows], result, total_s - device_s, total_s)
        return outputs

    def _count_lookup(self, seq: Sequence) -> None:
        """A prompt's prefix-cache lookup at its first admission, counted in tokens as vLLM does."""
        if self.args.enable_prefix_caching:
            self.stats.prefix_cache_queries += seq.num_prompt_tokens
            self.stats.prefix_cache_hits += seq.num_cached_tokens

    def _learn(self, plan: StepPlan, start: float, total_s: float) -> None:
        """Feeds the cost model. A step with decodes is measured start to start, as its decodes see
        it (the caller's work between steps, such as admitting requests and sending tokens,
        included); a step after which the engine may idle is measured by itself. With
        async_scheduling, `start` is that of the call that read the step's tokens (its decodes
        see their token then), and `total_s` runs from the step's launch to then."""
        if self.cost is None:
            return
        if plan.decode and self.has_unfinished_requests():
            self.cycle = (plan.shape, start)
        else:
            self.cost.observe(plan.shape, total_s)

    def _note_preemptions(self, count: int) -> None:
        """Counts preemptions and warns (rate-limited) when they repeat: the KV cache is too small for the load."""
        self.stats.num_preemptions += count
        self.recent_preemptions.append(count)
        recent = sum(self.recent_preemptions)
        quiet_s = time.monotonic() - self.last_preemption_warning
        if count and recent >= PREEMPTION_WARN_COUNT and quiet_s > PREEMPTION_WARN_EVERY_S:
            self.last_preemption_warning = time.monotonic()
            logger.warning(
                "%d preemptions in the last %d steps: the KV cache (%d blocks of %d tokens) is too small for "
                "this load, so requests are recomputed; raise gpu_memory_utilization or lower max_num_seqs",
                recent, len(self.recent_preemptions), self.blocks.num_blocks, self.blocks.block_size)

    def _append(self, seq: Sequence, token: int, logprobs: TokenLogprobs | None, now: float) -> RequestOutput:
        """Adds a sampled token, detokenizes it, and finishes the sample if a stop condition holds (a
        grammar's end included); forks an n > 1 request's other samples at its first token."""
        seq.output_token_ids[-1] = token  # in place of its placeholder
        first = seq.first_token_time is None
        seq.first_token_time = seq.first_token_time or now
        params = seq.params
        if seq.grammar is not None:
            seq.grammar.accept(token)
        if first and seq.index == 0 and params.n > 1:
            self._fork(seq)
        text, stop_hit = seq.detokenizer.step([token]) if seq.detokenizer else ("", False)
        reason = None
        if stop_hit or token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            reason = "stop"
        elif seq.grammar is not None and seq.grammar.terminated:
            reason = "stop"
        elif len(seq.output_token_ids) >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        request_done = False
        if reason is None:
            self.blocks.register(seq)  # blocks that waited for this token to be known
        else:
            if not stop_hit and seq.detokenizer:
                text += seq.detokenizer.finish()
            self.scheduler.remove(seq)
            seq.status, seq.finish_reason = Status.FINISHED, reason
            request_done = self._sample_finished(seq.request_id)
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=[token],
            new_text=text,
            finished=request_done,
            finish_reason=reason,
            index=seq.index,
            prompt_logprobs=[None] + seq.prompt_logprobs if first and params.prompt_logprobs is not None else None,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=len(seq.output_token_ids),
            num_cached_tokens=seq.num_cached_tokens or 0,
            arrival_time=seq.arrival_time,
            scheduled_time=seq.admitted_time,
            first_token_time=seq.first_token_time,
            logprobs=None if logprobs is None else [logprobs],
        )

    def _sample_finished(self, request_id: str) -> bool:
        """Counts a sample out; True when it was the request's last."""
        self.unfinished[request_id] -= 1
        if self.unfinished[request_id]:
            return False
        self._drop(request_id)
        return True

    def _account(self, plan: StepPlan, sample_seqs: list[Sequence], result: StepResult, cpu_s: float,
                 total_s: float) -> None:
        """Counters and the step record."""
        stats, segments = self.stats, [seg for seg in plan.segments if seg.chunks]
        stats.iterations += 1
        if segments and plan.decode:
            stats.mixed_iterations += 1
        elif segments:
            stats.prefill_iterations += 1
        else:
            stats.decode_iterations += 1
        stats.last_prefill_layers = sum(len(seg.layers) for seg in segments)
        stats.prompt_tokens += sum(seg.num_tokens for seg in segments if seg.finishes)
        stats.generated_tokens += len(sample_seqs)
        experts_touched = result.experts_touched
        stats.expert_bytes_last_step = experts_touched * self.expert_bytes
        stats.expert_bytes_total += stats.expert_bytes_last_step
        stats.predicted_step_s, stats.measured_step_s = plan.predicted_s, total_s
        self.last_step = StepRecord(
            decode_ids=[s.request_id for s in plan.decode],
            segments=[SegmentRecord(seg.batch_id, [c.seq.request_id for c in seg.chunks], seg.num_tokens,
                                    seg.layers) for seg in segments],
            sampled_ids=[s.request_id for s in sample_seqs],
            experts_touched=experts_touched,
            cpu_s=cpu_s,
            total_s=total_s,
            predicted_s=plan.predicted_s,
            device_idle_s=result.device_idle_s,
        )

    def get_stats(self) -> EngineStats:
        stats = self.stats
        stats.num_running = len(self.scheduler.decoding) + len(self.scheduler.prefilling)
        stats.num_waiting = len(self.scheduler.waiting)
        stats.kv_blocks_free = self.blocks.num_free
        if self.energy_start is not None:
            stats.energy_joules = self.energy.read_joules() - self.energy_start
        return stats

    def abort_all(self) -> None:
        """Aborts every request, so every KV block is back in the pool; the engine goes on serving."""
        for request_id in list(self.seqs):
            self.abort(request_id)
        self.in_flight = None  # every row of it is dropped: nothing to read (its device work ends by itself)

    def shutdown(self) -> None:
        """Ends the engine: aborts what is left and stops the TP workers it started (the executor
        of another engine it borrowed stays up)."""
        self.abort_all()
        if self.grammars is not None:
            self.grammars.shutdown()
        if self.owns_executor:
            self.executor.shutdown()


def _failed(seq: Sequence, error: str) -> RequestOutput:
    """The final output of a request that could not start."""
    return RequestOutput(
        request_id=seq.request_id, new_token_ids=[], new_text="", finished=True, finish_reason=None,
        num_prompt_tokens=seq.num_prompt_tokens, num_output_tokens=0, arrival_time=seq.arrival_time,
        scheduled_time=None, first_token_time=None, error=error,
    )


def _has_tokenizer(model_dir: str) -> bool:
    return (Path(model_dir) / "tokenizer.json").is_file()

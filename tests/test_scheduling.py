"""Greedy equivalence across schedule modes and the schedulers' invariants, observed at run time."""
from __future__ import annotations

import pytest
import torch
from engine_utils import greedy, make_engine, random_arrivals, run_to_completion
from transformers import AutoModelForCausalLM

from laminar.policies.static import paper_num_groups
from laminar.step_plan import split_layers

NUM_LAYERS = 5


def workload(seed: int, n: int = 12) -> dict[int, list]:
    """Requests of mixed prompt/output lengths arriving at different iterations."""
    return random_arrivals(seed, n, range(1, 257), max_prompt=70, last_step=12, max_tokens=10)


@pytest.fixture(scope="module")
def reference(moe_checkpoint_5) -> dict[str, list[int]]:
    """HF generate, one prompt at a time."""
    model = AutoModelForCausalLM.from_pretrained(moe_checkpoint_5, dtype=torch.float32).eval()
    out = {}
    for reqs in workload(0).values():
        for rid, prompt, params in reqs:
            n = params.max_tokens
            ids = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
            out[rid] = ids[0, len(prompt):].tolist()
    return out


@pytest.mark.parametrize("budget", [8, 16, 64])
def test_chunked_matches_hf_generate(moe_checkpoint_5, reference, budget):
    engine = make_engine(moe_checkpoint_5, schedule_mode="chunked", max_num_batched_tokens=budget,
                         max_num_seqs=min(budget, 32))
    assert run_to_completion(engine, workload(0)) == reference
    assert engine.blocks.num_free == engine.blocks.num_blocks


class SpansPerBatch:
    """Collects, per prefill batch, the layer spans it crossed (one per iteration)."""

    def __init__(self) -> None:
        self.spans: dict[int, list[range]] = {}

    def __call__(self, it, engine) -> None:
        for seg in engine.last_step.segments if engine.last_step else []:
            self.spans.setdefault(seg.batch_id, []).append(seg.layers)

    def group_counts(self) -> set[int]:
        return {len(spans) for spans in self.spans.values()}


@pytest.mark.parametrize("groups", [1, 2, 3, 4])
def test_layered_matches_hf_generate(moe_checkpoint_5, reference, groups):
    engine = make_engine(moe_checkpoint_5, schedule_mode="layered", num_stages=groups, group_token_thresholds=(),
                         max_num_batched_tokens=32)
    seen = SpansPerBatch()
    outputs = run_to_completion(engine, workload(0), on_step=seen)
    assert outputs == reference
    assert seen.group_counts() == {groups}
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_more_stages_than_layers_is_clamped(moe_checkpoint_5, reference):
    """num_stages above the layer count gives one layer per group."""
    engine = make_engine(moe_checkpoint_5, num_stages=8, group_token_thresholds=(), max_num_batched_tokens=32)
    seen = SpansPerBatch()
    outputs = run_to_completion(engine, workload(0), on_step=seen)
    assert outputs == reference
    assert seen.group_counts() == {NUM_LAYERS}


def test_group_policy():
    from laminar import EngineArgs

    args = EngineArgs(model="x", num_stages=16)
    picks = [paper_num_groups(args, n, 48) for n in (1, 512, 513, 1024, 2048, 4096, 4097, 100_000)]
    assert picks == [1, 1, 2, 2, 4, 8, 16, 16]
    assert paper_num_groups(args, 100_000, 5) == 5
    assert paper_num_groups(EngineArgs(model="x", num_stages=3), 4000, 48) == 3
    assert [len(g) for g in split_layers(5, 3)] == [2, 2, 1]
    assert [list(g) for g in split_layers(48, 16)][-1] == [45, 46, 47]
    assert paper_num_groups(EngineArgs(model="x", group_token_thresholds=[100, 200]), 150, 48) == 2
    for bad in ((1024, 512), (0, 512), (512, 512), "512"):
        with pytest.raises(ValueError, match="group_token_thresholds"):
            EngineArgs(model="x", group_token_thresholds=bad)


def test_the_policy_decides_and_the_scheduler_admits():
    """A policy only looks at the queue: planning admits nothing and grows no KV block; the
    scheduler applies its decision (admission, blocks, the batch in flight)."""
    from laminar import EngineArgs, SamplingParams
    from laminar.block_manager import BlockManager
    from laminar.scheduler import Scheduler
    from laminar.sequence import Sequence, Status
    from laminar.step_plan import Chunk

    blocks = BlockManager(64, 4)
    scheduler = Scheduler(EngineArgs(model="x", max_num_batched_tokens=32, num_stages=4, group_token_thresholds=()),
                          8, blocks)
    seq = Sequence("a", list(range(1, 21)), SamplingParams(), None, None, 0.0)
    scheduler.add(seq)
    decision = scheduler.policy.plan([], scheduler.batches, scheduler)
    assert decision.segments == [] and decision.new_batch.chunks == [Chunk(seq, 0, 20)]
    assert decision.new_batch.layers == range(0, 2) and len(decision.new_batch.groups) == 4
    assert seq.status == Status.WAITING and blocks.num_free == 64 and not scheduler.batches
    plan = scheduler.schedule()
    assert seq.status == Status.PREFILLING and blocks.num_free == 64 - 5 and len(scheduler.batches) == 1
    assert [seg.layers for seg in plan.segments] == [range(0, 2)] and plan.carried == (scheduler.batches[0].id,)


class LayerRows:
    """Forward hooks counting the rows each decoder layer processes in the current iteration."""

    def __init__(self, engine) -> None:
        self.rows: list[int] = [0] * NUM_LAYERS
        for i, layer in enumerate(engine.executor.runner.model.layers):
            layer.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def hook(module, args, output):
            self.rows[i] = args[0].shape[0]
        return hook

    def take(self) -> list[int]:
        rows, self.rows = self.rows, [0] * NUM_LAYERS
        return rows


def observe(engine, arrivals):
    """Runs a workload and returns, per iteration: (record, rows per layer, {request: new tokens})."""
    hooks = LayerRows(engine)
    trace = []
    it = 0
    while engine.has_unfinished_requests() or any(k >= it for k in arrivals):
        for rid, prompt, params in arrivals.get(it, []):
            engine.add_request(rid, prompt, params)
        outs = engine.step()
        it += 1
        if engine.last_step is None:
            continue
        trace.append((engine.last_step, hooks.take(), {o.request_id: len(o.new_token_ids) for o in outs},
                      {o.request_id for o in outs if o.finished}))
    return trace


def assert_each_token_crosses_each_layer_once(trace, prompt_tokens: int) -> None:
    """Each layer runs the decodes plus the segments whose span covers it; over the run every
    prompt token crosses every layer exactly once."""
    prefill_rows = [0] * NUM_LAYERS
    for it, (record, rows, _, _) in enumerate(trace):
        decode = len(record.decode_ids)
        for layer in range(NUM_LAYERS):
            prefill = sum(seg.tokens for seg in record.segments if layer in seg.layers)
            assert rows[layer] == decode + prefill, (it, layer)
            prefill_rows[layer] += prefill
    assert prefill_rows == [prompt_tokens] * NUM_LAYERS


def assert_no_decode_stall(trace):
    """Once a request has its first token, it gains exactly one token per iteration until it finishes."""
    decoding: set[str] = set()
    for record, _, new, finished in trace:
        for rid in decoding:
            assert new.get(rid) == 1, f"{rid} stalled"
        decoding = (decoding | set(new)) - finished


@pytest.mark.parametrize("groups", [2, 3, 4])
def test_layered_invariants(moe_checkpoint_5, groups):
    arrivals = workload(1, n=16)
    prompts = {rid: len(p) for reqs in arrivals.values() for rid, p, _ in reqs}
    budget = 48
    engine = make_engine(moe_checkpoint_5, num_stages=groups, group_token_thresholds=(),
                         max_num_batched_tokens=budget)
    trace = observe(engine, arrivals)
    assert_no_decode_stall(trace)
    layer_groups = split_layers(NUM_LAYERS, groups)
    assert_each_token_crosses_each_layer_once(trace, sum(prompts.values()))
    batch_iters: dict[str, list[int]] = {}
    first_token: dict[str, int] = {}
    spans: dict[int, list[range]] = {}
    for it, (record, rows, new, _) in enumerate(trace):
        assert len(record.segments) <= 1  # the static policy moves one batch at a time
        for seg in record.segments:
            spans.setdefault(seg.batch_id, []).append(seg.layers)
        for rid in (rid for seg in record.segments for rid in seg.request_ids):
            batch_iters.setdefault(rid, []).append(it)
        for rid in new:
            first_token.setdefault(rid, it)
    assert all(tuple(s) == layer_groups for s in spans.values())
    for rid, iters in batch_iters.items():
        # Each batch (a prompt split by the budget takes several) crosses the G groups in G
        # consecutive iterations; the first token comes at the end of the last one.
        assert len(iters) % groups == 0
        for b in range(0, len(iters), groups):
            assert iters[b:b + groups] == list(range(iters[b], iters[b] + groups))
        assert first_token[rid] == iters[-1]


@pytest.mark.parametrize("budget", [8, 24])
def test_chunked_invariants(moe_checkpoint_5, budget):
    arrivals = workload(2, n=16)
    prompts = sum(len(p) for reqs in arrivals.values() for _, p, _ in reqs)
    engine = make_engine(moe_checkpoint_5, schedule_mode="chunked", max_num_batched_tokens=budget,
                         max_num_seqs=budget)
    trace = observe(engine, arrivals)
    assert_no_decode_stall(trace)
    total_prefill = 0
    for record, rows, _, _ in trace:
        assert rows[0] <= budget
        assert len(set(rows)) == 1  # every token crosses every layer in the same iteration
        total_prefill += rows[0] - len(record.decode_ids)
    assert total_prefill == prompts


def test_layered_moves_fewer_expert_bytes(moe_checkpoint_5):
    """One long prompt: chunked reloads every expert per chunk, layered once per layer."""
    prompt = list(range(1, 129))
    chunked = make_engine(moe_checkpoint_5, schedule_mode="chunked", max_num_batched_tokens=16, max_num_seqs=16)
    layered = make_engine(moe_checkpoint_5, num_stages=4, group_token_thresholds=(), max_num_batched_tokens=128)
    for engine in (chunked, layered):
        run_to_completion(engine, {0: [("long", prompt, greedy(1))]})
    ratio = chunked.get_stats().expert_bytes_total / layered.get_stats().expert_bytes_total
    assert ratio >= 0.75 * (len(prompt) // 16), ratio
    mixed = workload(3)
    engines = [make_engine(moe_checkpoint_5, schedule_mode="chunked", max_num_batched_tokens=16, max_num_seqs=16),
               make_engine(moe_checkpoint_5, num_stages=4, max_num_batched_tokens=128)]
    for engine in engines:
        run_to_completion(engine, mixed)
    assert engines[1].get_stats().expert_bytes_total < engines[0].get_stats().expert_bytes_total


def test_logits_rows_follow_the_stacked_row_order():
    """Decode rows first, then the finishing segments' rows in plan order; a segment still between
    layers has no rows in the last layer's output. One logits row per sampled sequence, in order."""
    from laminar import SamplingParams
    from laminar.sequence import Sequence
    from laminar.step_plan import Chunk, Segment, StepPlan

    d1, d2, a, b, c, e = (Sequence(rid, [1] * n, SamplingParams(), None, None, 0.0)
                          for rid, n in (("d1", 4), ("d2", 4), ("a", 3), ("b", 5), ("c", 2), ("e", 4)))
    segments = (Segment(0, (Chunk(a, 0, 3), Chunk(b, 0, 2)), range(0, 4), None, True),
                Segment(1, (Chunk(e, 0, 4),), range(0, 2), None, False),
                Segment(2, (Chunk(c, 0, 2),), range(2, 4), None, True))
    plan = StepPlan((d1, d2), segments, (1,))
    assert plan.logits_rows() == [0, 1, 4, 8]
    assert plan.sample_seqs == [d1, d2, a, c]

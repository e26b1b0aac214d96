"""The SLO policy (tbt_slo_ms): greedy parity, its invariants, and the cost model it plans with.

The engines here plan with a fixed profile (no online learning) and the open-loop control
(slo_control "fixed": test_tail_control.py covers the feedback), so the spans they choose do not
depend on this machine's timings; the profile's numbers are chosen so that the targets below give
partial spans, several batches in one step, and whole-stack steps.
"""
from __future__ import annotations

import numpy as np
import pytest
from engine_utils import greedy, make_engine, run_to_completion
from test_scheduling import (
    NUM_LAYERS,
    assert_each_token_crosses_each_layer_once,
    assert_no_decode_stall,
    observe,
    reference,  # noqa: F401  (reference is a fixture)
    workload,
)

from laminar import EngineArgs, LLMEngine, SamplingParams
from laminar.cost_model import FEATURES, CostModel, Profile
from laminar.sequence import Sequence
from laminar.step_plan import Chunk, SegmentShape, StepShape, stretches

PROFILE = Profile(num_layers=NUM_LAYERS, decode_rows=(1, 32), decode_s=(1e-3, 2e-3), mixed_rows=(16, 128),
                  mixed_s=(4e-3, 12e-3), context_s=1e-6, self_pair_s=1e-7, context_pair_s=2e-7)


def slo_engine(model_dir, target_ms: float, mode: str = "layered", **overrides) -> LLMEngine:
    args = dict(model=str(model_dir), device="cpu", dtype="float32", block_size=4, num_kv_blocks=512,
                max_num_batched_tokens=64, max_num_seqs=32, schedule_mode=mode, prefill_policy="slo",
                tbt_slo_ms=target_ms, slo_control="fixed")
    args.update(overrides)
    return LLMEngine(EngineArgs(**args), cost=CostModel(PROFILE, learn=False))


@pytest.mark.parametrize("mode", ["layered", "chunked"])
@pytest.mark.parametrize("target_ms", [10, 25, 60])
def test_slo_policy_matches_hf_generate(moe_checkpoint_5, reference, mode, target_ms):  # noqa: F811
    engine = slo_engine(moe_checkpoint_5, target_ms, mode)
    assert run_to_completion(engine, workload(0)) == reference
    assert engine.blocks.num_free == engine.blocks.num_blocks and not engine.scheduler.batches


@pytest.mark.parametrize("target_ms", [10, 18, 25, 60])
def test_layered_slo_invariants(moe_checkpoint_5, target_ms):
    """Whatever the spans: every prompt token crosses every layer once, decodes never stall,
    steps beyond the progress floor fit the target, and some steps run two batches at once."""
    arrivals = workload(1, n=16)
    prompts = sum(len(p) for reqs in arrivals.values() for _, p, _ in reqs)
    engine = slo_engine(moe_checkpoint_5, target_ms)
    trace = observe(engine, arrivals)
    assert_no_decode_stall(trace)
    assert_each_token_crosses_each_layer_once(trace, prompts)
    spans = {}
    for record, _, _, _ in trace:
        for seg in record.segments:
            assert seg.layers.start == spans.get(seg.batch_id, 0), "a batch resumes where it stopped"
            spans[seg.batch_id] = seg.layers.stop
        one_layer_floor = len(record.segments) == 1 and len(record.segments[0].layers) == 1
        if record.decode_ids and not one_layer_floor:
            assert record.predicted_s <= target_ms * 1e-3 * 0.9 + 1e-12
    assert set(spans.values()) == {NUM_LAYERS}
    layers_per_step = {len(seg.layers) for record, *_ in trace for seg in record.segments}
    if target_ms <= 25:
        assert min(layers_per_step) < NUM_LAYERS, "the target cuts spans short"
    if target_ms == 18:
        assert any(len(record.segments) == 2 for record, *_ in trace), "a batch starts as the last one finishes"


def test_idle_prompt_crosses_every_layer_in_one_step(moe_checkpoint_5):
    """No decodes, nobody waits between tokens: the whole stack in one iteration, whatever the target."""
    engine = slo_engine(moe_checkpoint_5, 1)
    engine.add_request("alone", list(range(1, 60)), greedy(1))
    engine.step()
    (segment,) = engine.last_step.segments
    assert segment.layers == range(NUM_LAYERS) and engine.last_step.sampled_ids == ["alone"]


def test_chunked_slo_sizes_chunks_to_the_target(moe_checkpoint_5):
    """With decodes running, a tighter target gives smaller chunks (but at least the floor)."""
    sizes = {}
    for target in (12, 40):
        engine = slo_engine(moe_checkpoint_5, target, "chunked")
        run = {0: [("d", [5, 6, 7], greedy(40))], 2: [("long", list(range(1, 200)), greedy(1))]}
        chunks = []
        run_to_completion(engine, run, on_step=lambda it, e: e.last_step and chunks.extend(
            s.tokens for s in e.last_step.segments if "long" in s.request_ids))
        sizes[target] = max(chunks)
    assert 16 <= sizes[12] < sizes[40]


def test_stretches_cut_where_spans_start_and_stop():
    assert stretches(6, []) == [(range(0, 6), ())]
    assert stretches(6, [range(2, 6), range(0, 3)]) == [
        (range(0, 2), (1,)), (range(2, 3), (0, 1)), (range(3, 6), (0,))]


def test_cost_model_features_follow_the_profile():
    model = CostModel(PROFILE, learn=False)
    decode_only = StepShape(32, 32 * 100, ())
    f = model.features(decode_only)
    assert f[FEATURES.index("decode_layers")] == pytest.approx(NUM_LAYERS * 2e-3)
    assert f[FEATURES.index("decode_context")] == pytest.approx(NUM_LAYERS * 3200 * 1e-6)
    chunk = Chunk(Sequence("s", list(range(50)), SamplingParams(), None, None, 0.0), 10, 40)
    mixed = StepShape(32, 3200, (SegmentShape.of([chunk], range(1, 3)),))
    f = model.features(mixed)
    assert f[FEATURES.index("decode_layers")] == pytest.approx(3 * 2e-3)
    assert f[FEATURES.index("mixed_layers")] == pytest.approx(2 * float(np.interp(72, (16, 128), (4e-3, 12e-3))))
    assert f[FEATURES.index("prefill_context_attention")] == pytest.approx(2 * 40 * 10 * 2e-7)
    assert model.predict(mixed) > model.predict(decode_only)


def test_cost_model_learns_what_the_profile_misses():
    """Steps that run 1.6x the profile plus 2 ms of host work: the refit predicts them within 5%."""
    model = CostModel(PROFILE)
    rng = np.random.default_rng(0)
    shapes = [StepShape(int(b), int(b) * 300, (SegmentShape(int(t), int(t) ** 2 // 2, 0, range(0, int(k))),) if t else ())
              for b, t, k in zip(rng.integers(1, 32, 200), rng.integers(0, 128, 200), rng.integers(1, 6, 200))]
    truth = lambda s: 1.6 * CostModel(PROFILE, learn=False).predict(s) + 2e-3  # noqa: E731
    for shape in shapes:
        model.observe(shape, truth(shape))
    errors = [abs(model.predict(s) - truth(s)) / truth(s) for s in shapes[-50:]]
    assert np.median(errors) < 0.05
    assert model.margin() == pytest.approx(1.0, abs=0.1)


def test_tbt_slo_ms_is_validated():
    for bad in (0, -5, "100", True):
        with pytest.raises(ValueError, match="tbt_slo_ms"):
            EngineArgs(model="x", prefill_policy="slo", tbt_slo_ms=bad)
    assert EngineArgs(model="x", prefill_policy="slo", tbt_slo_ms=50).tbt_slo_ms == 50


def test_policy_options_belong_to_their_policy():
    """The policy is named, not implied: its options are required, the other policy's are errors."""
    with pytest.raises(ValueError, match="needs tbt_slo_ms"):
        EngineArgs(model="x", prefill_policy="slo")
    with pytest.raises(ValueError, match="tbt_slo_ms applies to prefill_policy 'slo' only"):
        EngineArgs(model="x", tbt_slo_ms=50)
    for option in (dict(num_stages=4), dict(group_token_thresholds=(512,))):
        with pytest.raises(ValueError, match="applies to prefill_policy 'static' only"):
            EngineArgs(model="x", prefill_policy="slo", tbt_slo_ms=50, **option)
    with pytest.raises(ValueError, match="prefill_policy must be one of"):
        EngineArgs(model="x", prefill_policy="fastest")
    assert EngineArgs(model="x", num_stages=4, group_token_thresholds=[8]).group_token_thresholds == (8,)


def test_profiled_engine_plans_on_its_own_measurements(moe_checkpoint_5, reference):  # noqa: F811
    """Without an injected model the engine profiles its runner, and still computes the same tokens."""
    engine = make_engine(moe_checkpoint_5, prefill_policy="slo", tbt_slo_ms=5, max_num_batched_tokens=32)
    profile = engine.executor.profiler.measured
    assert profile is not None and profile.num_layers == NUM_LAYERS and all(t > 0 for t in profile.mixed_s)
    assert run_to_completion(engine, workload(0)) == reference

"""KV blocks come back after every ending; bad input is refused cleanly; seeded sampling repeats."""
from __future__ import annotations

import pytest
from engine_utils import greedy, make_engine, run_to_completion

from laminar import EngineArgs, SamplingParams

PROMPT = list(range(1, 41))
OTHER = [7, 8, 9, 10, 11]


def reference(model_dir, prompts: dict[str, list[int]], n: int) -> dict[str, list[int]]:
    engine = make_engine(model_dir)
    return run_to_completion(engine, {0: [(rid, p, greedy(n)) for rid, p in prompts.items()]})


def assert_pool_full(engine) -> None:
    assert engine.blocks.num_free == engine.blocks.num_blocks
    sched = engine.scheduler
    assert not engine.seqs and not (sched.waiting or sched.prefilling or sched.decoding) and not sched.batches


@pytest.mark.parametrize("abort_at", range(5))
def test_abort_mid_prefill_at_every_group(moe_checkpoint_5, abort_at):
    """A 40-token prompt layered over 4 groups, aborted after 0..4 iterations, beside another request."""
    expected = reference(moe_checkpoint_5, {"other": OTHER}, 8)
    engine = make_engine(moe_checkpoint_5, num_stages=4, group_token_thresholds=())
    engine.add_request("victim", PROMPT, greedy(8))
    engine.add_request("other", OTHER, greedy(8))
    got: list[int] = []
    for _ in range(abort_at):
        for out in engine.step():
            (got if out.request_id == "other" else []).extend(out.new_token_ids)
    if 1 <= abort_at <= 3:  # the batch is in flight, its rows carried between groups
        (segment,) = engine.last_step.segments
        assert "victim" in segment.request_ids and segment.layers.start == [0, 2, 3][abort_at - 1]
        (batch,) = engine.scheduler.batches
        assert list(engine.executor.runner.carry) == [batch.id] and batch.layers_done == segment.layers.stop
    assert engine.abort("victim")
    assert not engine.abort("victim")
    while engine.has_unfinished_requests():
        for out in engine.step():
            got.extend(out.new_token_ids)
    assert got == expected["other"]
    assert_pool_full(engine)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_abort_mid_decode(moe_checkpoint_5, mode):
    engine = make_engine(moe_checkpoint_5, schedule_mode=mode, max_num_seqs=16)
    engine.add_request("a", PROMPT, greedy(20))
    engine.add_request("b", OTHER, greedy(20))
    produced = 0
    while produced < 6:
        produced += sum(len(o.new_token_ids) for o in engine.step() if o.request_id == "a")
    assert engine.abort("a")
    engine.abort_all()
    assert_pool_full(engine)
    engine.add_request("c", PROMPT, greedy(3))  # abort_all is not shutdown: the engine serves on
    assert sum(len(o.new_token_ids) for _ in range(20) for o in engine.step()) == 3
    engine.shutdown()
    assert_pool_full(engine)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_preemption_keeps_greedy_tokens(moe_checkpoint_5, mode):
    prompts = {f"p{i}": [(i * 13 + j) % 250 + 1 for j in range(20 + i)] for i in range(6)}
    expected = reference(moe_checkpoint_5, prompts, 24)
    engine = make_engine(moe_checkpoint_5, schedule_mode=mode, num_kv_blocks=40, max_model_len=128,
                         max_num_seqs=16)
    got = run_to_completion(engine, {0: [(rid, p, greedy(24)) for rid, p in prompts.items()]})
    assert engine.get_stats().num_preemptions > 0
    assert got == expected
    assert_pool_full(engine)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
@pytest.mark.parametrize("async_scheduling", [False, True])
def test_bounded_kv_wait_preempts_decodes_for_an_overdue_prompt(moe_checkpoint_5, mode, async_scheduling):
    """Three long generations fill the KV cache; a prompt that does not fit arrives. Without
    max_kv_wait_ms it waits for a decode to end (as in vLLM); with it, it preempts the newest
    decode and gets its first token long before. Every request's greedy tokens are unchanged."""
    decodes = {f"d{i}": [(i * 31 + j) % 250 + 1 for j in range(16)] for i in range(3)}
    late = [(5 * j) % 250 + 1 for j in range(60)]  # 15 blocks, within one chunk
    expected = {**reference(moe_checkpoint_5, decodes, 40), **reference(moe_checkpoint_5, {"late": late}, 4)}
    arrivals = {0: [(rid, p, greedy(40)) for rid, p in decodes.items()], 26: [("late", late, greedy(4))]}
    steps = {}
    for bound in (None, 1e-3):
        engine = make_engine(moe_checkpoint_5, schedule_mode=mode, num_kv_blocks=44, max_model_len=128,
                             max_kv_wait_ms=bound, async_scheduling=async_scheduling)
        first: dict[str, int] = {}
        got = run_to_completion(engine, arrivals, on_step=lambda it, e, f=first: f.update(
            {rid: it for rid, seq in e.seqs.items() if seq.output_token_ids and rid not in f}))
        assert got == expected
        steps[bound] = first["late"] - 26, engine.get_stats().num_preemptions
        assert_pool_full(engine)
    (waited, preempted), (bounded, preempted_bounded) = steps[None], steps[1e-3]
    assert preempted == 0 and waited >= 10, steps  # until the first decode ends (40 tokens)
    assert preempted_bounded >= 1 and bounded <= 5, steps


@pytest.mark.parametrize("bad", [0, -5, True, "10"])
def test_max_kv_wait_ms_must_be_positive_milliseconds(bad):
    with pytest.raises(ValueError, match="max_kv_wait_ms"):
        EngineArgs(model="x", max_kv_wait_ms=bad)


def test_completion_frees_blocks(moe_checkpoint_5):
    engine = make_engine(moe_checkpoint_5)
    run_to_completion(engine, {0: [("a", PROMPT, greedy(5))], 2: [("b", OTHER, greedy(3))]})
    assert_pool_full(engine)
    assert engine.get_stats().kv_usage == 0.0


@pytest.mark.parametrize(
    "prompt,params,field",
    [
        ([], {}, "prompt"),
        (list(range(1, 200)), {}, "max_model_len"),
        ([1, 2, 999], {}, "token ids"),
        (OTHER, {"max_tokens": 0}, "max_tokens"),
        (OTHER, {"temperature": -0.5}, "temperature"),
        (OTHER, {"top_p": 0.0}, "top_p"),
        (OTHER, {"top_p": 1.5}, "top_p"),
        (OTHER, {"bogus": 1}, "bogus"),
    ],
)
def test_bad_input_is_refused_and_others_keep_going(moe_checkpoint_5, prompt, params, field):
    expected = reference(moe_checkpoint_5, {"good": OTHER}, 6)
    engine = make_engine(moe_checkpoint_5, max_model_len=128)
    engine.add_request("good", OTHER, greedy(6))
    got = [t for out in engine.step() for t in out.new_token_ids]
    with pytest.raises(ValueError, match=field):
        engine.add_request("bad", prompt, SamplingParams.from_dict({"temperature": 0.0, **params}))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("good", OTHER, greedy(6))
    while engine.has_unfinished_requests():
        got += [t for out in engine.step() for t in out.new_token_ids]
    assert got == expected["good"]
    assert_pool_full(engine)


def test_seeded_sampling_repeats_across_runs_and_modes(moe_checkpoint_5):
    params = [SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, top_k=40, seed=s, ignore_eos=True)
              for s in (1, 2)]
    results = []
    for mode, extra in [("layered", {}), ("layered", {}), ("chunked", {"max_num_batched_tokens": 16,
                                                                         "max_num_seqs": 16})]:
        engine = make_engine(moe_checkpoint_5, schedule_mode=mode, **extra)
        arrivals = {0: [("s1", PROMPT, params[0])], 3: [("s2", OTHER, params[1])]}
        results.append(run_to_completion(engine, arrivals))
    assert results[0] == results[1] == results[2]
    assert results[0]["s1"] != results[0]["s2"]


def test_repeated_preemption_is_warned_once(moe_checkpoint_5, caplog):
    """A KV cache far too small for the load: the engine says so (rate-limited), and still finishes."""
    prompts = {f"p{i}": [(i * 7 + j) % 250 + 1 for j in range(12)] for i in range(10)}
    engine = make_engine(moe_checkpoint_5, num_kv_blocks=24, max_model_len=64, max_num_seqs=16)
    with caplog.at_level("WARNING", logger="laminar.engine"):
        run_to_completion(engine, {0: [(rid, p, greedy(40)) for rid, p in prompts.items()]})
    assert engine.get_stats().num_preemptions >= 8
    warnings = [r for r in caplog.records if "preemptions in the last" in r.getMessage()]
    assert len(warnings) == 1 and "too small" in warnings[0].getMessage()
    assert_pool_full(engine)

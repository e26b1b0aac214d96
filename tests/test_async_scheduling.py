"""Asynchronous scheduling (async_scheduling): step N+1 is planned and launched before step N's
tokens are read. The same tokens as synchronous stepping, in both schedule modes and both
policies, with aborts, preemption, stops, grammars, penalties, n > 1, logprobs, prefix caching
and tensor parallelism; every KV block is back in the pool afterwards."""
from __future__ import annotations

import pytest
import torch
from engine_utils import greedy, make_engine, random_arrivals, run_to_completion
from test_lifecycle import OTHER, reference
from test_lifecycle import PROMPT as LONG_PROMPT
from test_slo_policy import slo_engine
from test_structured_output import PROMPT, check_schema, constrained
from test_tp import make_engine as make_tp_engine
from test_tp import run_script

from laminar import EngineArgs, SamplingParams


def workload(seed: int, n: int = 12) -> dict[int, list]:
    return random_arrivals(seed, n, range(1, 257), max_prompt=70, last_step=12, max_tokens=10)


def engines(model, policy: str, **overrides):
    """The same engine twice: synchronous and asynchronous."""
    if policy == "slo":
        return [slo_engine(model, 25, async_scheduling=a, **overrides) for a in (False, True)]
    return [make_engine(model, async_scheduling=a, **overrides) for a in (False, True)]


def assert_idle(engine) -> None:
    """Nothing in flight, no sequence anywhere, every block back in the pool."""
    assert engine.in_flight is None and not engine.seqs
    assert not engine.scheduler.decoding and not engine.scheduler.prefilling and not engine.scheduler.batches
    assert engine.blocks.num_free == engine.blocks.num_blocks


@pytest.mark.parametrize("policy", ["static", "slo"])
@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_greedy_parity(moe_checkpoint_5, mode, policy):
    sync, overlapped = engines(moe_checkpoint_5, policy, schedule_mode=mode)
    assert run_to_completion(overlapped, workload(0)) == run_to_completion(sync, workload(0))
    assert_idle(overlapped)
    assert overlapped.get_stats().generated_tokens == sync.get_stats().generated_tokens


def test_step_returns_the_previous_steps_tokens(moe_checkpoint_5):
    """The first step launches and returns nothing; each later one returns the step before it,
    and a request at its max_tokens-th token is not decoded again."""
    engine = make_engine(moe_checkpoint_5, async_scheduling=True)
    engine.add_request("a", [5, 6, 7], greedy(3))
    assert engine.step() == [] and engine.in_flight is not None
    assert engine.seqs["a"].output_token_ids == [-1]  # the placeholder of row 0
    counts = [len(engine.step()) for _ in range(3)]
    assert counts == [1, 1, 1] and not engine.has_unfinished_requests()
    assert engine.stats.generated_tokens == 3 and engine.stats.iterations == 3
    assert_idle(engine)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_abort_mid_overlap(moe_checkpoint_5, mode):
    """Aborted while its row is in flight (decoding, or mid-prefill between layer groups): no more
    outputs for it, the others' tokens unchanged, every block freed."""
    arrivals = workload(4, n=8)
    expected = run_to_completion(make_engine(moe_checkpoint_5, schedule_mode=mode), arrivals)
    engine = make_engine(moe_checkpoint_5, schedule_mode=mode, async_scheduling=True)
    victims = {"r1": 2, "r3": 6, "r5": 9}
    aborted_in_flight = []

    def abort(it, engine):
        for rid, at in victims.items():
            if it == at and rid in engine.seqs:
                flight = engine.in_flight
                aborted_in_flight.append(flight is not None and any(s.request_id == rid for s in flight.seqs))
                engine.abort(rid)

    got = run_to_completion(engine, arrivals, on_step=abort)
    assert any(aborted_in_flight)
    for rid, tokens in got.items():
        if rid in victims:
            assert tokens == expected[rid][:len(tokens)]
        else:
            assert tokens == expected[rid], rid
    assert_idle(engine)


@pytest.mark.parametrize("abort_at", range(5))
def test_abort_mid_layered_prefill(moe_checkpoint_5, abort_at):
    """A 40-token prompt layered over 4 groups with another, aborted after 0..4 steps: between groups
    (its rows carried on the device), or once its first token is pending. The other's tokens stay."""
    expected = reference(moe_checkpoint_5, {"other": OTHER}, 8)
    engine = make_engine(moe_checkpoint_5, num_stages=4, group_token_thresholds=(), async_scheduling=True)
    engine.add_request("victim", LONG_PROMPT, greedy(8))
    engine.add_request("other", OTHER, greedy(8))
    got: list[int] = []
    for _ in range(abort_at):
        got += [t for out in engine.step() if out.request_id == "other" for t in out.new_token_ids]
    victim = engine.seqs["victim"]
    if 1 <= abort_at <= 3:
        (batch,) = engine.scheduler.batches
        assert victim in [c.seq for c in batch.chunks] and 0 < batch.layers_done < 5
    if abort_at == 4:
        assert victim.num_pending and victim in engine.in_flight.seqs
    assert engine.abort("victim")
    while engine.has_unfinished_requests():
        got += [t for out in engine.step() if out.request_id == "other" for t in out.new_token_ids]
    assert got == expected["other"]
    assert_idle(engine)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_preemption_mid_overlap(moe_checkpoint_5, mode):
    """A KV cache too small for the batch: sequences are preempted with their last token still on
    the device (and may be readmitted in the same step, reading it there); same tokens."""
    arrivals = {0: [(f"r{i}", [(11 * i + j) % 250 + 1 for j in range(9 + 5 * i)], greedy(24)) for i in range(6)]}
    sync, overlapped = (make_engine(moe_checkpoint_5, schedule_mode=mode, num_kv_blocks=40, max_model_len=128,
                                    async_scheduling=a)
                        for a in (False, True))
    assert run_to_completion(overlapped, arrivals) == run_to_completion(sync, arrivals)
    assert overlapped.stats.num_preemptions > 0
    assert_idle(overlapped)


def test_stop_tokens_and_max_tokens_exact(moe_checkpoint_5):
    """A stop token ends a request at exactly the same token as in synchronous stepping (the row
    planned meanwhile is dropped), max_tokens at exactly max_tokens; the finish reasons match."""
    prompt = [3, 14, 15, 92, 65]
    free = run_to_completion(make_engine(moe_checkpoint_5), {0: [("free", prompt, greedy(12))]})["free"]
    requests = [("stop", prompt, greedy(12, stop_token_ids=[free[4]])), ("eos", prompt, SamplingParams(
        max_tokens=12, temperature=0.0)), ("len", prompt, greedy(7)), ("one", prompt, greedy(1))]
    results = []
    for a in (False, True):
        engine = make_engine(moe_checkpoint_5, async_scheduling=a)
        reasons = {}
        tokens = run_to_completion(engine, {0: requests}, on_output=lambda o, r=reasons: o.finish_reason and r.update(
            {o.request_id: (o.finish_reason, o.num_output_tokens)}))
        assert_idle(engine)
        results.append((tokens, reasons))
    assert results[0] == results[1]
    tokens, reasons = results[1]
    assert tokens["stop"] == free[:free.index(free[4]) + 1] and reasons["stop"][0] == "stop"
    assert reasons["len"] == ("length", 7) and len(tokens["len"]) == 7 and reasons["one"] == ("length", 1)


def test_grammars_penalties_forks_and_logprobs(demo_model):
    """Rows that read the previous token on the host (grammar masks, penalties' histories) see it:
    the previous step's tokens are read before this step samples. Seeded, so both runs draw alike."""
    requests = {
        "json": constrained("json", 3),
        "pen": SamplingParams(max_tokens=24, temperature=0.8, seed=5, presence_penalty=1.5, frequency_penalty=0.5,
                              repetition_penalty=1.3, logprobs=2),
        "n": SamplingParams(max_tokens=10, temperature=1.0, seed=9, n=3, logit_bias={"5": 4.0}),
        "plp": SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=1),
    }
    runs, values = [], []  # values: the logprobs themselves, per sample
    for a in (False, True):
        engine = make_engine(demo_model, block_size=16, async_scheduling=a)
        for rid, params in requests.items():
            engine.add_request(rid, PROMPT, params)
        for future in engine.compiling.values():  # both runs admit the grammar's request at the same step
            future.result()
        out: dict = {}
        values.append({})
        while engine.has_unfinished_requests():
            for o in engine.step():
                d = out.setdefault((o.request_id, o.index), {"ids": [], "text": "", "lp": [], "plp": None})
                d["ids"] += o.new_token_ids
                d["text"] += o.new_text
                d["lp"] += [(x.token_id, x.rank, [t for t, _ in x.top]) for x in o.logprobs or []]
                values[-1].setdefault((o.request_id, o.index), []).extend(x.logprob for x in o.logprobs or [])
                d["plp"] = d["plp"] or [e and (e.token_id, e.rank) for e in o.prompt_logprobs or []]
                d["reason"] = o.finish_reason
        assert_idle(engine)
        runs.append(out)
    assert runs[0] == runs[1]
    for key, sync_values in values[0].items():  # batches differ a little (rows planned past a stop)
        assert sync_values == pytest.approx(values[1][key], abs=1e-4), key
    check_schema(runs[1][("json", 0)]["text"])
    assert runs[1][("json", 0)]["reason"] == "stop" and len(runs[1][("pen", 0)]["lp"]) == 24
    assert sorted(k for k in runs[1] if k[0] == "n") == [("n", 0), ("n", 1), ("n", 2)]


def test_prefix_cache_hits_with_pending_tokens(moe_checkpoint_5):
    """Blocks holding a pending token are registered once it is known: later requests with the same
    prefix hit the cache, and their tokens match synchronous stepping."""
    shared = list(range(10, 30))
    arrivals = {0: [("a", shared, greedy(12))], 8: [("b", shared + [1, 2], greedy(6))],
                14: [("c", shared + [3], greedy(6))]}
    sync, overlapped = (make_engine(moe_checkpoint_5, async_scheduling=a) for a in (False, True))
    assert run_to_completion(overlapped, arrivals) == run_to_completion(sync, arrivals)
    assert overlapped.stats.prefix_cache_hits > 0
    assert_idle(overlapped)


def test_tp2_async_matches_tp1(moe_checkpoint_5):
    """The workers read pending tokens from the sampled ids rank 0 broadcasts after each step; an
    abort mid-overlap leaves the others' tokens as they were."""
    expected = run_script(make_tp_engine(moe_checkpoint_5, 1))
    got = run_script(make_tp_engine(moe_checkpoint_5, 2, async_scheduling=True), abort_after={"r4": 4})
    assert {rid: t for rid, t in got.items() if rid != "r4"} == {rid: t for rid, t in expected.items() if rid != "r4"}
    assert got.get("r4", []) == expected["r4"][:len(got.get("r4", []))] != expected["r4"]


def test_default_is_on_for_cuda_and_off_on_the_cpu(tmp_path, monkeypatch):
    """Unset, the switch follows the device; set (argument or LAMINAR_ASYNC_SCHEDULING), it is obeyed."""
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.delenv("LAMINAR_ASYNC_SCHEDULING", raising=False)
    unset = EngineArgs(model=str(tmp_path))
    assert unset.async_scheduling is None
    assert unset.resolved_async_scheduling(torch.device("cuda")) is True
    assert unset.resolved_async_scheduling(torch.device("cpu")) is False
    assert EngineArgs(model=str(tmp_path), async_scheduling=False).resolved_async_scheduling(torch.device("cuda")) is False
    monkeypatch.setenv("LAMINAR_ASYNC_SCHEDULING", "1")
    assert EngineArgs(model=str(tmp_path)).resolved_async_scheduling(torch.device("cpu")) is True
    with pytest.raises(ValueError, match="async_scheduling must be true or false"):
        EngineArgs(model=str(tmp_path), async_scheduling="yes")

"""The deadline and priority prefill orders (policies/order.py) and their per-request fields.

As a function: who goes first for each case of the key. On the engine: greedy parity in both
modes with mixed priorities and budgets, who is admitted first, and the requests an engine with
another order refuses (a field it would ignore). The surfaces: Triton's sampling_parameters and
the OpenAI extra body carry both fields.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from engine_utils import greedy, make_engine, run_to_completion
from test_scheduling import reference, workload  # noqa: F401  (reference is a fixture)

from laminar import EngineArgs, SamplingParams
from laminar.openai_api.protocol import CompletionRequest
from laminar.policies import waiting_order
from laminar.sequence import Sequence, Status
from laminar.serving.request_parsing import RequestError, parse_request


def seq(name: str, arrival: float, output: int = 0, **params) -> Sequence:
    s = Sequence(request_id=name, prompt_token_ids=[1] * 8, params=SamplingParams(**params), generator=None,
                 detokenizer=None, arrival_time=arrival, index=0)
    s.output_token_ids = [2] * output
    return s


def ids(seqs: list[Sequence]) -> list[str]:
    return [s.request_id for s in seqs]


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    return str(tmp_path)


def test_deadline_order_function(model_dir):
    """Preempted and twice-late first, then earliest deadline among those in time, then the late ones."""
    args = EngineArgs(model=model_dir, prefill_order="deadline", ttft_slo_ms=1000)
    queue = [
        seq("in-time-late-deadline", 9.5),                      # deadline 10.5
        seq("own-short-budget", 9.8, ttft_slo_ms=300),          # deadline 10.1: ahead of the one above
        seq("late", 8.5),                                       # deadline 9.5: missed, within one more budget
        seq("twice-late", 7.0),                                 # deadline 8.0, +1 s = 9.0 < now: goes first
        seq("preempted", 9.9, output=2),                        # was running: first, as under FCFS
        seq("own-long-budget", 5.0, ttft_slo_ms=6000),          # deadline 11.0: still in time
    ]
    assert ids(waiting_order(args, queue, now=10.0)) == [
        "twice-late", "preempted", "own-short-budget", "in-time-late-deadline", "own-long-budget", "late"]


def test_deadline_order_demotes_prompts_that_cannot_make_it(model_dir):
    """With prefill times, a prompt in time whose prefill after those before it would end past its
    deadline waits behind the other prompts in time (ahead of the late ones), and does not count
    against those after it; without them the order is the plain deadline order."""
    args = EngineArgs(model=model_dir, prefill_order="deadline", ttft_slo_ms=1000)
    queue = [
        seq("preempted", 9.9, output=2),      # first; its 0.2 s counts against the others
        seq("tight", 9.3),                    # deadline 10.3: 10.0 + 0.2 + 0.3 > 10.3, hopeless
        seq("fits", 9.4),                     # deadline 10.4: 10.0 + 0.2 + 0.1 fits
        seq("roomy", 9.9),                    # deadline 10.9: 10.0 + 0.3 + 0.3 fits
        seq("late", 8.9),                     # deadline 9.9: late, behind the hopeless one by deadline
    ]
    times = {"preempted": 0.2, "tight": 0.3, "fits": 0.1, "roomy": 0.3, "late": 0.1}
    assert ids(waiting_order(args, queue, now=10.0, prefill_s=lambda s: times[s.request_id])) == [
        "preempted", "fits", "roomy", "late", "tight"]
    assert ids(waiting_order(args, queue, now=10.0)) == ["preempted", "tight", "fits", "roomy", "late"]


def test_deadline_order_defaults_to_two_seconds(model_dir):
    args = EngineArgs(model=model_dir, prefill_order="deadline")
    queue = [seq("b", 8.5), seq("a", 8.4, ttft_slo_ms=1000)]  # deadlines 10.5 and 9.4 (missed)
    assert ids(waiting_order(args, queue, now=10.0)) == ["b", "a"]


def test_priority_order_function(model_dir):
    args = EngineArgs(model=model_dir, prefill_order="priority")
    queue = [seq("p1-early", 1.0, priority=1), seq("p0", 3.0), seq("urgent", 4.0, priority=-5),
             seq("p1-late", 2.0, priority=1)]
    assert ids(waiting_order(args, queue, now=10.0)) == ["urgent", "p0", "p1-early", "p1-late"]


@pytest.mark.parametrize("mode", ["layered", "chunked"])
@pytest.mark.parametrize("order", ["deadline", "priority"])
@pytest.mark.parametrize("overlap", [False, True])
def test_orders_keep_greedy_parity(moe_checkpoint_5, reference, mode, order, overlap):  # noqa: F811
    """Mixed priorities / budgets reorder admission (a small KV cache: most runs also preempt);
    every output is still HF's, with and without asynchronous scheduling."""
    arrivals = {}
    for step, reqs in workload(0).items():
        arrivals[step] = [(rid, prompt, replace(params, **({"priority": len(prompt) % 3} if order == "priority" else
                                                          {"ttft_slo_ms": 1.0 + 50 * (len(prompt) % 4)})))
                          for rid, prompt, params in reqs]
    engine = make_engine(moe_checkpoint_5, schedule_mode=mode, max_num_batched_tokens=32, prefill_order=order,
                         num_kv_blocks=20, max_model_len=80, async_scheduling=overlap)
    assert run_to_completion(engine, arrivals) == reference
    assert engine.blocks.num_free == engine.blocks.num_blocks


def first_admitted(model: str, order: str, requests: list[tuple[str, float, SamplingParams]]) -> list[str]:
    """The request ids of the first step's prefill batch; each request: (id, seconds ago, params)."""
    engine = make_engine(model, schedule_mode="chunked", max_num_batched_tokens=8, max_num_seqs=8,
                         prefill_order=order)
    now = time.monotonic()
    for i, (rid, ago, params) in enumerate(requests):
        engine.add_request(rid, [5 + i] * 8, params, arrival_time=now - ago)
    engine.step()
    return engine.last_step.segments[0].request_ids


def test_engine_admits_by_priority_and_deadline(moe_checkpoint_5):
    assert first_admitted(moe_checkpoint_5, "priority", [("batch", 1.0, greedy(1, priority=2)),
                                                         ("chat", 0.0, greedy(1))]) == ["chat"]
    assert first_admitted(moe_checkpoint_5, "deadline", [("report", 0.5, greedy(1, ttft_slo_ms=10_000)),
                                                         ("chat", 0.0, greedy(1, ttft_slo_ms=500))]) == ["chat"]
    assert first_admitted(moe_checkpoint_5, "fcfs", [("report", 0.5, greedy(1)), ("chat", 0.0, greedy(1))]) == ["report"]


@pytest.mark.parametrize(("order", "params", "needs"), [
    ("fcfs", greedy(1, priority=1), "prefill_order 'priority'"),
    ("deadline", greedy(1, priority=1), "prefill_order 'priority'"),
    ("priority", greedy(1, ttft_slo_ms=100), "prefill_order 'deadline'"),
])
def test_a_field_the_order_would_ignore_is_refused(moe_checkpoint_5, order, params, needs):
    engine = make_engine(moe_checkpoint_5, prefill_order=order)
    with pytest.raises(ValueError, match=needs):
        engine.add_request("r", [1, 2, 3], params)
    assert not engine.seqs


@pytest.mark.parametrize(("fields", "error"), [
    (dict(priority=1.5), "priority must be an int"),
    (dict(ttft_slo_ms=0), "ttft_slo_ms must be a positive"),
    (dict(ttft_slo_ms="soon"), "ttft_slo_ms must be a positive"),
])
def test_bad_request_fields(fields, error):
    with pytest.raises(ValueError, match=error):
        SamplingParams(**fields)


def test_engine_args_ttft_slo_belongs_to_deadline(model_dir):
    with pytest.raises(ValueError, match="ttft_slo_ms applies to prefill_order 'deadline' only"):
        EngineArgs(model=model_dir, ttft_slo_ms=500)
    with pytest.raises(ValueError, match="ttft_slo_ms must be a positive"):
        EngineArgs(model=model_dir, prefill_order="deadline", ttft_slo_ms=-1)
    assert EngineArgs(model=model_dir, prefill_order="deadline", ttft_slo_ms=500).ttft_slo_ms == 500


def test_triton_sampling_parameters_carry_both():
    """vLLM-backend JSON (numbers may be strings, as genai-perf sends them)."""
    parsed = parse_request({"text_input": np.array([b"hi"], dtype=object),
                            "sampling_parameters": np.array([b'{"priority": "-2", "ttft_slo_ms": "750"}'], dtype=object)})
    assert (parsed.params.priority, parsed.params.ttft_slo_ms) == (-2, 750.0)
    with pytest.raises(RequestError, match="priority"):
        parse_request({"text_input": np.array([b"hi"], dtype=object),
                       "sampling_parameters": np.array([b'{"priority": "high"}'], dtype=object)})


def test_openai_extra_body_carries_both():
    fields = CompletionRequest(model="m", prompt="hi", priority=3, ttft_slo_ms=250).sampling()
    assert (fields["priority"], fields["ttft_slo_ms"]) == (3, 250)
    assert "priority" not in CompletionRequest(model="m", prompt="hi").sampling()


def test_priority_preempts_the_lowest_priority_first(moe_checkpoint_5):
    """A KV cache too small for both: under FCFS-style keeping the newest decode is preempted; under
    the priority order the low-priority one is, although it was admitted first."""
    def preempted(order: str) -> list[str]:
        engine = make_engine(moe_checkpoint_5, prefill_order=order, num_kv_blocks=6, block_size=4, max_model_len=24,
                             max_num_seqs=4)
        first = greedy(12, priority=5) if order == "priority" else greedy(12)
        engine.add_request("batch", [3] * 8, first)
        engine.step()  # admitted alone, so it is the older decode
        engine.add_request("chat", [4] * 8, greedy(12))
        victims: list[str] = []
        while engine.has_unfinished_requests():
            engine.step()
            victims += [rid for rid, seq in engine.seqs.items()
                        if seq.status == Status.WAITING and seq.output_token_ids and rid not in victims]
        assert engine.blocks.num_free == engine.blocks.num_blocks
        return victims

    assert preempted("fcfs")[0] == "chat"
    assert preempted("priority")[0] == "batch"

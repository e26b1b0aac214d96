"""The serving layer without Triton: request parsing, engine config, response assembly, and the
engine loop thread driving a real engine on the demo checkpoint."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from laminar import EngineArgs, LLMEngine, RequestOutput, SamplingParams
from laminar.client.grpc_stream import text
from laminar.serving import (
    KNOWN_INPUTS,
    EngineLoop,
    ErrorKind,
    PromptLimits,
    RequestError,
    ResponseBuilder,
    check_no_parameters,
    engine_field_types,
    parse_request,
    resolve_engine_config,
)


def test_parse_merges_json_and_field_tensors():
    parsed = parse_request({
        "text_input": text("hi"), "stream": np.array([True]),
        "sampling_parameters": text('{"temperature": 0.5, "top_k": 4}'),
        "max_tokens": np.array([7], dtype=np.int32), "random_seed": np.array([3], dtype=np.uint64),
        "stop_words": np.array([b"x", b"yz"], dtype=np.object_), "end_id": np.array([2], dtype=np.int32),
    })
    assert parsed.prompt == "hi" and parsed.stream and not parsed.exclude_input_in_output
    p = parsed.params
    assert (p.temperature, p.top_k, p.max_tokens, p.seed, p.stop, p.stop_token_ids) == (0.5, 4, 7, 3, ["x", "yz"], [2])


def test_parse_defaults_and_token_prompt():
    parsed = parse_request({"input_ids": np.array([[4, 5, 6]], dtype=np.int32)})
    assert parsed.prompt == [4, 5, 6] and not parsed.stream
    assert parsed.params == SamplingParams()


@pytest.mark.parametrize("inputs, needle", [
    ({"text_input": text("a"), "max_tokens": np.array([1.5], dtype=np.float32)}, "'max_tokens' has dtype"),
    ({"text_input": text("a"), "top_k": np.array([1, 2], dtype=np.int32)}, "exactly one value"),
    ({"input_ids": np.ones((2, 3), dtype=np.int32)}, "one sequence"),
    ({"text_input": np.array([b"\xff"], dtype=np.object_)}, "UTF-8"),
    ({"text_input": text("a"), "sampling_parameters": text("[1]")}, "JSON object"),
    ({"text_input": text("a"), "beam_width": np.array([2], dtype=np.int32)}, "unknown input(s): beam_width"),
    ({"text_input": text("a"), "end_id": np.array([-1], dtype=np.int32)}, "'end_id' must be a token id >= 0"),
    ({"text_input": text("a"), "sampling_parameters": text('{"seed": 1e30}')}, "seed must be an int"),
    ({"text_input": text("a"), "sampling_parameters": text('{"seed": 1000000000000000000000000000000}')},
     "'seed' must be in [0, 2**64)"),
    ({"text_input": text("a"), "sampling_parameters": text('{"stop": ' + "[" * 100000 + "]" * 100000 + "}")},
     "'sampling_parameters' is nested too deeply"),
])
def test_parse_errors_name_the_problem(inputs, needle):
    with pytest.raises(RequestError) as e:
        parse_request(inputs)
    assert needle in str(e.value)


@pytest.mark.parametrize("parameters, needle", [
    ('{"max_token": 3}', "'max_token' (did you mean 'max_tokens'?)"),
    ('{"temprature": 0.5, "zz": 1}', "'temprature' (did you mean 'temperature'?), 'zz'"),
])
def test_request_parameters_are_refused_naming_the_key(parameters, needle):
    with pytest.raises(RequestError) as e:
        check_no_parameters(parameters, KNOWN_INPUTS)
    assert needle in str(e.value)
    check_no_parameters('{"id": "abc"}', KNOWN_INPUTS)
    check_no_parameters("{}", KNOWN_INPUTS)


def test_prompt_limits_refuse_by_size_before_tokenizing(engine):
    limits = PromptLimits(engine.tokenizer, engine.max_model_len)
    assert limits.max_bytes == engine.max_model_len * engine.tokenizer.max_token_bytes()
    with pytest.raises(RequestError, match="'text_input' is 5000000 bytes"):
        limits.check_sizes({"text_input": text("a" * 5_000_000)})
    with pytest.raises(RequestError, match="'input_ids' has"):
        limits.check_sizes({"input_ids": np.ones(engine.max_model_len, dtype=np.int32)})
    with pytest.raises(RequestError, match="max_model_len"):
        limits.token_ids(" ".join(["hello"] * engine.max_model_len))
    assert limits.token_ids("hello world") == engine.tokenizer.encode("hello world")


def test_engine_config_types_parameters_and_env_overrides(tmp_path):
    types = engine_field_types(EngineArgs)
    params = {"model": "../m", "num_stages": "4", "max_model_len": "", "enforce_eager": "true",
              "gpu_memory_utilization": "0.5", "num_kv_blocks": "none"}
    env = {"LAMINAR_NUM_STAGES": "8", "LAMINAR_DEVICE": "cuda", "LAMINAR_UNRELATED": "x"}
    got = resolve_engine_config(params, types, str(tmp_path / "repo" / "laminar"), env)
    assert got == {"model": str(tmp_path / "repo" / "m"), "num_stages": 8, "enforce_eager": True,
                   "gpu_memory_utilization": 0.5, "num_kv_blocks": None, "device": "cuda"}
    with pytest.raises(ValueError, match="'num_stages'"):
        resolve_engine_config({"model": "/m", "num_stages": "many"}, types, "/", {})
    with pytest.raises(ValueError, match="bogus"):
        EngineArgs.from_dict(resolve_engine_config({"model": "/m", "bogus": "1"}, types, "/", {}))


def test_environment_switches_are_engine_arguments(monkeypatch):
    """The switches that lived only in the environment are EngineArgs fields: unset, each reads
    LAMINAR_<NAME>; through config.pbtxt the environment overrides them as it does every field."""
    for name, value in (("FLASHINFER", "0"), ("TP_TIMEOUT_S", "2.5"), ("OPS", "torch"), ("LOG_LEVEL", "debug")):
        monkeypatch.setenv("LAMINAR_" + name, value)
    args = EngineArgs(model="x")
    assert (args.flashinfer, args.tp_timeout_s, args.ops, args.flash_attn, args.log_level) == (
        False, 2.5, "torch", True, "DEBUG")
    assert EngineArgs(model="x", flashinfer=True, ops="auto").flashinfer
    for bad in (dict(ops="cuda"), dict(log_level="LOUD"), dict(tp_timeout_s=0), dict(flash_attn="no")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            EngineArgs(model="x", **bad)
    typed = resolve_engine_config({"model": "/m", "flash_attn": "true"}, engine_field_types(EngineArgs), "/",
                                  {"LAMINAR_FLASH_ATTN": "false"})
    assert typed["flash_attn"] is False


def _out(ids, text_, reason=None) -> RequestOutput:
    return RequestOutput("r", ids, text_, reason is not None, reason, 3, 0, 0.0, None, None)


def test_non_streaming_response_accumulates_and_prefixes_the_prompt():
    builder = ResponseBuilder(parse_request({"input_ids": np.array([1, 2], dtype=np.int32),
                                             "return_num_output_tokens": np.array([True])}), lambda ids: "P")
    assert builder.feed(_out([7], "a")) is None
    final = builder.feed(_out([8], "b", "stop"))
    assert final["text_output"][0] == b"Pab" and final["output_ids"].tolist() == [7, 8]
    assert final["finish_reason"][0] == b"stop" and final["num_output_tokens"].tolist() == [2]


class Sink:
    """Records what the loop delivers; can cancel after some outputs."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.ids: list[int] = []
        self.error: str | None = None
        self.finish_reason: str | None = None
        self.cancel_after = cancel_after
        self.done = threading.Event()

    def send(self, out: RequestOutput) -> None:
        self.ids += out.new_token_ids
        if out.finished:
            self.finish_reason = out.finish_reason
            self.done.set()

    def fail(self, message: str, kind: ErrorKind) -> None:
        self.error, self.kind = message, kind
        self.done.set()

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.ids) >= self.cancel_after


@pytest.fixture
def engine(demo_model) -> LLMEngine:
    return LLMEngine(EngineArgs(model=str(demo_model), device="cpu", num_kv_blocks=300, block_size=16))


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def run_alone(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> list[int]:
    engine.add_request("alone", prompt, params)
    ids = []
    while engine.has_unfinished_requests():
        ids += [t for o in engine.step() for t in o.new_token_ids]
    return ids


def test_loop_serves_submissions_from_many_threads(engine, demo_model):
    expected = LLMEngine(EngineArgs(model=str(demo_model), device="cpu"))
    loop = EngineLoop(engine)
    loop.start()
    sinks = [Sink() for _ in range(6)]
    threads = [threading.Thread(target=loop.submit, args=([i + 1, 7, 9], greedy(5 + i), s)) for i, s in enumerate(sinks)]
    for t in threads:
        t.start()
    assert all(s.done.wait(60) for s in sinks)
    loop.shutdown()
    for i, s in enumerate(sinks):
        assert (s.error, s.finish_reason, s.ids) == (None, "length", run_alone(expected, [i + 1, 7, 9], greedy(5 + i)))


def test_loop_aborts_cancelled_requests_and_frees_their_blocks(engine):
    loop = EngineLoop(engine)
    loop.start()
    cancelled, bad, good = Sink(cancel_after=2), Sink(), Sink()
    loop.submit([1, 2, 3], greedy(500), cancelled)
    loop.submit([1] * 5000, greedy(3), bad)
    loop.submit([4, 5], greedy(4), good)
    assert good.done.wait(60) and bad.done.wait(1)
    deadline = time.monotonic() + 30
    while engine.has_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    loop.shutdown()
    assert 2 <= len(cancelled.ids) < 500 and cancelled.done.is_set(), "a cancelled request still ends"
    assert cancelled.kind is ErrorKind.CANCELLED and "cancelled" in cancelled.error
    assert "max_model_len" in bad.error and bad.kind is ErrorKind.INVALID and good.ids and good.error is None
    stats = engine.get_stats()
    assert stats.kv_blocks_free == stats.kv_blocks_total


def test_idle_loop_sleeps(engine):
    loop = EngineLoop(engine)
    loop.start()
    time.sleep(0.1)
    cpu = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu < 0.05, "the idle loop must wait, not spin"
    loop.shutdown()


class FailingEngine(LLMEngine):
    """The real engine with a fault injected at its third step."""

    def step(self) -> list[RequestOutput]:
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 3:
            raise RuntimeError("device lost")
        return super().step()


def test_engine_failure_fails_everything_and_reports_unhealthy(demo_model):
    failures: list[str] = []
    loop = EngineLoop(FailingEngine(EngineArgs(model=str(demo_model), device="cpu", num_kv_blocks=300)),
                      on_failure=failures.append)
    loop.start()
    sinks = [Sink(), Sink()]
    for s in sinks:
        loop.submit([1, 2], greedy(100), s)
    assert all(s.done.wait(30) for s in sinks)
    assert all("device lost" in s.error for s in sinks) and failures and loop.error is not None
    late = Sink()
    loop.submit([1], greedy(1), late)
    assert late.done.is_set() and "device lost" in late.error
    loop.shutdown()


def test_shutdown_fails_in_flight_requests(engine):
    loop = EngineLoop(engine)
    loop.start()
    sink = Sink()
    loop.submit([1, 2], greedy(1000), sink)
    loop.shutdown()
    assert sink.done.wait(30) and "shutting down" in sink.error
    assert not engine.has_unfinished_requests()
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_end_in_flight_answers_everything_and_keeps_serving(engine):
    loop = EngineLoop(engine)
    loop.start()
    running = Sink()
    loop.submit([1, 2], greedy(1000), running)
    deadline = time.monotonic() + 30
    while len(running.ids) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.end_in_flight("server is shutting down (exit timeout)")
    assert running.done.wait(30) and running.kind is ErrorKind.UNAVAILABLE and "exit timeout" in running.error
    later = Sink()
    loop.submit([4, 5], greedy(3), later)
    assert later.done.wait(30) and later.error is None and len(later.ids) == 3
    loop.shutdown()
    assert engine.blocks.num_free == engine.blocks.num_blocks

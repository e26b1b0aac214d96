"""End to end: the shipped model in a real tritonserver, driven by the real tritonclient,
perf_analyzer and HTTP generate, checked against the engine run in the test process."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import MODES, SLO_MODEL

from laminar import SamplingParams
from laminar.client.grpc_stream import Stream, generate, greedy_tensors, text, wait_all
from laminar.client.triton_server import ROOT, wait_for

PROMPTS = ["The quick brown fox", "In a layered prefill scheduler, the experts"]


def offline(engine, prompts: list, max_tokens: int) -> list[list[int]]:
    """Greedy outputs of the in-process engine, all requests in one batch."""
    out: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        engine.add_request(f"o{i}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        out[f"o{i}"] = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            out[o.request_id].extend(o.new_token_ids)
    return [out[f"o{i}"] for i in range(len(prompts))]


def metric(metrics: str, name: str, model: str = "laminar", **labels: str) -> float:
    """Value of one sample of the Prometheus text for `model` (0 if absent)."""
    total = 0.0
    for line in metrics.splitlines():
        m = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if m and f'model="{model}"' in m.group(1) and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.mark.parametrize("mode", MODES)
def test_streaming_matches_offline_engine(server, offline_engines, mode):
    prompts = PROMPTS + [[5, 17, 99, 3, 250, 41]]
    expected = [offline(offline_engines[mode], [p], 12)[0] for p in prompts]
    for prompt, want in zip(prompts, expected):
        result = generate(server.grpc_url, greedy_tensors(prompt, 12), model=MODES[mode])
        assert result.error is None
        assert result.ids == want
        assert len(result.responses) == 12, "one response per engine step"
        assert [r["finish_reason"][0] for r in result.responses] == [b""] * 11 + [b"length"]


def test_non_streaming_grpc_sends_one_response(server, offline_engines):
    tensors = {**greedy_tensors(PROMPTS[0], 8, stream=False),
               "return_num_input_tokens": np.array([True]), "return_num_output_tokens": np.array([True])}
    result = generate(server.grpc_url, tensors)
    assert result.error is None and len(result.responses) == 1
    (response,) = result.responses
    assert result.ids == offline(offline_engines["layered"], [PROMPTS[0]], 8)[0]
    assert response["text_output"][0].decode().startswith(PROMPTS[0]), "prompt included by default"
    assert int(response["num_output_tokens"][0]) == 8
    assert int(response["num_input_tokens"][0]) == len(offline_engines["layered"].tokenizer.encode(PROMPTS[0]))


def test_http_generate(server):
    streamed = generate(server.grpc_url, greedy_tensors(PROMPTS[1], 6))
    body = {"text_input": PROMPTS[1], "max_tokens": 6, "ignore_eos": True, "exclude_input_in_output": True,
            "sampling_parameters": json.dumps({"temperature": 0})}
    req = urllib.request.Request(f"{server.http_url}/v2/models/laminar/generate", data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        reply = json.loads(r.read())
    assert reply["text_output"] == streamed.text
    assert reply["output_ids"] == streamed.ids
    assert reply["finish_reason"] == "length"


def test_32_concurrent_streams_of_mixed_lengths(server, offline_engines):
    rng = random.Random(7)
    vocab = 2048
    prompts = [[rng.randrange(vocab) for _ in range(rng.randrange(4, 300))] for _ in range(32)]
    lengths = [rng.randrange(4, 24) for _ in range(32)]
    stream = Stream(server.grpc_url)
    try:
        results = [stream.send(f"c{i}", greedy_tensors(p, n)) for i, (p, n) in enumerate(zip(prompts, lengths))]
        wait_all(results)
    finally:
        stream.close()
    for i, (result, prompt, n) in enumerate(zip(results, prompts, lengths)):
        assert result.error is None, f"request {i}: {result.error}"
        assert result.finish_reason == "length" and len(result.ids) == n
        assert result.ids == offline(offline_engines["layered"], [prompt], n)[0], f"request {i}"


def test_cancel_mid_stream_frees_the_kv_cache(server):
    aborted_before = metric(server.metrics(), "lp:request_aborted_total")
    stream = Stream(server.grpc_url)
    result = stream.send("long", greedy_tensors(PROMPTS[0], 2000))
    assert wait_for(lambda: len(result.responses) >= 3)
    assert metric(server.metrics(), "lp:kv_cache_usage_perc") > 0
    stream.close(cancel=True)
    assert wait_for(lambda: metric(server.metrics(), "lp:request_aborted_total") == aborted_before + 1)
    metrics = server.metrics()
    assert metric(metrics, "lp:kv_cache_usage_perc") == 0.0
    assert metric(metrics, "lp:num_requests_running") == 0.0
    assert "aborted request" in server.log()
    assert len(result.responses) < 2000
    assert generate(server.grpc_url, greedy_tensors(PROMPTS[1], 4)).ids


def _too_long(server) -> dict:
    max_len = json.loads((ROOT / "demo_model" / "config.json").read_text())["max_position_embeddings"]
    return {"input_ids": np.ones(max_len + 1, dtype=np.int32)}


BAD_REQUESTS = {
    "no prompt": ({"max_tokens": np.array([4], dtype=np.int32)}, "exactly one of 'text_input' or 'input_ids'"),
    "both prompts": ({"text_input": text("hi"), "input_ids": np.array([1, 2], dtype=np.int32)},
                     "got 'text_input' and 'input_ids'"),
    "malformed json": ({"text_input": text("hi"), "sampling_parameters": text("{max_tokens: 3")}, "not valid JSON"),
    "unknown field": ({"text_input": text("hi"), "sampling_parameters": text('{"temprature": 0}')}, "temprature"),
    "negative temperature": ({"text_input": text("hi"), "temperature": np.array([-1.0], dtype=np.float32)}, "temperature"),
    "top_p out of range": ({"text_input": text("hi"), "sampling_parameters": text('{"top_p": 1.5}')}, "top_p"),
    "zero max_tokens": ({"text_input": text("hi"), "max_tokens": np.array([0], dtype=np.int32)}, "max_tokens"),
    "field twice": ({"text_input": text("hi"), "max_tokens": np.array([3], dtype=np.int32),
                     "sampling_parameters": text('{"max_tokens": 3}')}, "given both"),
    "token id out of vocab": ({"input_ids": np.array([1, 10**8], dtype=np.int32)}, "token ids"),
    "empty input_ids": ({"input_ids": np.zeros(0, dtype=np.int32)}, "empty"),
    "wrong dtype": ({"text_input": text("hi"), "max_tokens": np.array([3.0], dtype=np.float32)}, "max_tokens"),
    "wrong shape": ({"text_input": text("hi"), "max_tokens": np.array([3, 4], dtype=np.int32)}, "max_tokens"),
}


@pytest.mark.parametrize("case", [*BAD_REQUESTS, "prompt too long"])
def test_bad_request_gets_a_clear_error_and_server_keeps_serving(server, case):
    tensors, needle = (_too_long(server), "max_model_len") if case == "prompt too long" else BAD_REQUESTS[case]
    result = generate(server.grpc_url, tensors)
    assert result.error is not None and needle in result.error, result.error
    assert server.is_ready()
    good = generate(server.grpc_url, greedy_tensors(PROMPTS[0], 3))
    assert good.error is None and len(good.ids) == 3


def test_metrics_move_as_requests_are_served(server):
    before = server.metrics()
    generate(server.grpc_url, greedy_tensors(PROMPTS[1], 5))
    after = server.metrics()
    grew = {name: metric(after, name) - metric(before, name) for name in (
        "lp:time_to_first_token_seconds_count", "lp:inter_token_latency_seconds_count",
        "lp:e2e_request_latency_seconds_count", "lp:request_queue_time_seconds_count",
        "lp:prompt_tokens_total", "lp:generation_tokens_total", "lp:expert_weight_bytes_total",
        "lp:iterations_total")}
    assert grew["lp:time_to_first_token_seconds_count"] == 1
    assert grew["lp:inter_token_latency_seconds_count"] == 4
    assert grew["lp:e2e_request_latency_seconds_count"] == 1
    assert grew["lp:request_queue_time_seconds_count"] == 1
    assert grew["lp:generation_tokens_total"] == 5
    assert grew["lp:prompt_tokens_total"] > 0 and grew["lp:expert_weight_bytes_total"] > 0
    assert grew["lp:iterations_total"] >= 5
    assert metric(after, "lp:request_success_total", finish_reason="length") > 0
    for gauge in ("lp:num_requests_running", "lp:num_requests_waiting", "lp:kv_cache_usage_perc"):
        assert f"{gauge}{{" in after
    per_token = metric(after, "lp:expert_weight_bytes_per_token")
    total = metric(after, "lp:expert_weight_bytes_total")
    tokens = metric(after, "lp:prompt_tokens_total") + metric(after, "lp:generation_tokens_total")
    assert per_token == pytest.approx(total / tokens, rel=1e-3)
    assert metric(after, "lp:gpu_energy_joules_per_token") == 0.0, "no energy without NVML"


def test_slo_policy_serves_and_reports_its_predictions(server, offline_engines):
    """tbt_slo_ms through config.pbtxt: same greedy tokens, and the policy's metrics move."""
    prompts = PROMPTS + [list(range(3, 200))]
    expected = [offline(offline_engines["layered"], [p], 6)[0] for p in prompts]
    before = server.metrics()
    stream = Stream(server.grpc_url)
    try:
        results = [stream.send(f"s{i}", greedy_tensors(p, 6), SLO_MODEL) for i, p in enumerate(prompts)]
        wait_all(results)
    finally:
        stream.close()
    assert [r.ids for r in results] == expected
    after = server.metrics()
    grew = {name: metric(after, name, model=SLO_MODEL) - metric(before, name, model=SLO_MODEL) for name in (
        "lp:prefill_layers_per_iteration_count", "lp:step_time_measured_over_predicted_count")}
    assert grew["lp:prefill_layers_per_iteration_count"] >= 1
    assert grew["lp:step_time_measured_over_predicted_count"] >= 6
    assert metric(after, "lp:step_time_predicted_seconds", model=SLO_MODEL) > 0


def test_perf_analyzer_streaming_export(server, demo_model, tmp_path):
    max_tokens = 6
    cmd = [sys.executable, str(ROOT / "perf" / "run_perf_analyzer.py"), "--url", server.grpc_url,
           "--model-dir", str(demo_model), "--lengths", "8,40", "--max-tokens", str(max_tokens),
           "--per-length", "2", "--concurrency", "1,2", "--requests", "8", "--stability", "1000",
           "--out-dir", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    export = json.loads((tmp_path / "profile_export.json").read_text())
    assert [e["experiment"]["value"] for e in export["experiments"]] == [1, 2], "every listed concurrency"
    for experiment in export["experiments"]:
        requests = experiment["requests"]
        assert len(requests) >= 8
        for req in requests:
            stamps = req["response_timestamps"]
            assert len(stamps) == max_tokens, "one timestamped response per generated token"
            assert req["timestamp"] < stamps[0] and stamps == sorted(stamps)
    summary = json.loads(run.stdout)
    assert all(s["ttft_ms"]["p50"] > 0 and s["tbt_ms"]["p50"] > 0 for s in summary)


def test_plain_perf_analyzer_with_the_shipped_input_data(server):
    """As the README runs it: perf_analyzer sends only the inputs the data names."""
    perf_analyzer = ROOT / ".venv" / "bin" / "perf_analyzer"
    cmd = [str(perf_analyzer), "-m", "laminar", "-u", server.grpc_url, "-i", "grpc", "--streaming",
           "--input-data", str(ROOT / "perf" / "pa" / "data" / "text_prompts.json"),
           "--measurement-mode", "count_windows", "--measurement-request-count", "4", "--stability-percentage", "1000"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Successful request count" in run.stdout, run.stdout[-3000:] + run.stderr

"""What NVIDIA's OpenAI frontend and genai-perf send: parsed without Triton, then through the
real tritonserver; the logprobs output in the vLLM backend's JSON format."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from test_serving_server import metric

from laminar import RequestOutput
from laminar.client.grpc_stream import generate, text
from laminar.client.triton_server import ROOT
from laminar.outputs import TokenLogprobs
from laminar.serving import RequestError, ResponseBuilder, parse_request


def test_trtllm_style_tensors_of_shape_1x1():
    """NVIDIA's frontend for a Python-backend model: TensorRT-LLM names, [1, 1] arrays."""
    parsed = parse_request({
        "text_input": np.array([[b"hi"]], dtype=np.object_), "stream": np.array([[True]]),
        "max_tokens": np.array([[9]], dtype=np.int32), "stop_words": np.array([[b"x", b"y"]], dtype=np.object_),
        "top_p": np.array([[0.5]], dtype=np.float32), "temperature": np.array([[0.25]], dtype=np.float32),
        "frequency_penalty": np.array([[0.5]], dtype=np.float32),
        "presence_penalty": np.array([[-1.0]], dtype=np.float32),
        "repetition_penalty": np.array([[1.25]], dtype=np.float32), "seed": np.array([[11]], dtype=np.uint64),
        "exclude_input_in_output": np.array([[True]]),
        "return_num_input_tokens": np.array([[True]]), "return_num_output_tokens": np.array([[True]]),
    })
    p = parsed.params
    assert parsed.prompt == "hi" and parsed.stream and parsed.exclude_input_in_output
    assert (p.max_tokens, p.stop, p.top_p, p.temperature, p.seed) == (9, ["x", "y"], 0.5, 0.25, 11)
    assert (p.frequency_penalty, p.presence_penalty, p.repetition_penalty, p.logprobs) == (0.5, -1.0, 1.25, None)


def test_vllm_style_json_with_numeric_strings_n_and_return_logprobs():
    """NVIDIA's frontend with --backend vllm and genai-perf's `"max_tokens": "256"`."""
    sp = {"frequency_penalty": 0, "presence_penalty": 0.5, "n": 1, "temperature": "0.5", "top_p": 1,
          "max_tokens": "256", "logprobs": 2, "ignore_eos": False, "stop": ["\n"]}
    parsed = parse_request({"text_input": text("hi"), "stream": np.array([False]),
                            "exclude_input_in_output": np.array([True]), "sampling_parameters": text(json.dumps(sp)),
                            "return_logprobs": np.array([True])})
    p = parsed.params
    assert parsed.return_logprobs and (p.max_tokens, p.temperature, p.logprobs, p.presence_penalty) == (256, 0.5, 2, 0.5)
    bare = parse_request({"text_input": text("hi"), "return_logprobs": np.array([True])})
    assert bare.params.logprobs == 0


@pytest.mark.parametrize("sp, needle", [
    ({"n": 0}, "n must be an int in \\[1, 64\\]"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one of"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"max_tokens": "many"}, "'max_tokens' must be a number"),
    ({"presence_penalty": 3}, "presence_penalty"),
])
def test_vllm_json_errors(sp, needle):
    with pytest.raises(RequestError, match=needle):
        parse_request({"text_input": text("hi"), "sampling_parameters": text(json.dumps(sp))})


def _output(ids: list[int], lps: list[TokenLogprobs], finished: bool) -> RequestOutput:
    return RequestOutput("r", ids, "".join(f"<{i}>" for i in ids), finished, "length" if finished else None,
                         3, len(ids), 0.0, None, None, lps)


def test_logprobs_output_is_the_vllm_backend_json():
    parsed = parse_request({"text_input": text("hi"), "stream": np.array([True]),
                            "sampling_parameters": text('{"logprobs": 2}'), "return_logprobs": np.array([True])})
    builder = ResponseBuilder(parsed, lambda ids: f"<{ids[0]}>")
    sampled_not_top = TokenLogprobs(token_id=7, logprob=-3.0, rank=4, top=[(1, -0.5), (2, float("-inf"))])
    arrays = builder.feed(_output([7], [sampled_not_top], False))
    got = json.loads(arrays["logprobs"][0])
    assert got == [{"7": {"logprob": -3.0, "rank": 4, "decoded_token": "<7>"},
                    "1": {"logprob": -0.5, "rank": 1, "decoded_token": "<1>"},
                    "2": {"logprob": -9999.0, "rank": 2, "decoded_token": "<2>"}}]
    assert list(got[0]) == ["7", "1", "2"]  # the sampled token first
    top_is_sampled = TokenLogprobs(token_id=1, logprob=-0.1, rank=1, top=[(1, -0.1), (5, -2.5)])
    got = json.loads(builder.feed(_output([1], [top_is_sampled], True))["logprobs"][0])
    assert got == [{"1": {"logprob": -0.1, "rank": 1, "decoded_token": "<1>"},
                    "5": {"logprob": -2.5, "rank": 2, "decoded_token": "<5>"}}]


def test_nvidia_frontend_vllm_request_through_triton(server):
    """The tensors NVIDIA's OpenAI frontend (--backend vllm) sends for a chat request with
    logprobs=true, top_logprobs=2: every input is accepted and the outputs it reads come back."""
    sp = {"frequency_penalty": 0.0, "presence_penalty": 0.0, "n": 1, "temperature": 0.0, "top_p": 1.0,
          "ignore_eos": True, "logprobs": 2, "max_tokens": 4}
    result = generate(server.grpc_url, {
        "text_input": text("hello"), "stream": np.array([False]), "exclude_input_in_output": np.array([True]),
        "sampling_parameters": text(json.dumps(sp)), "return_num_input_tokens": np.array([True]),
        "return_num_output_tokens": np.array([True]), "return_logprobs": np.array([True])})
    assert result.error is None
    (response,) = result.responses
    assert int(response["num_output_tokens"][0]) == 4 and int(response["num_input_tokens"][0]) > 0
    entries = json.loads(response["logprobs"][0])
    assert [int(next(iter(e))) for e in entries] == result.ids
    assert all(len(e) == 2 and next(iter(e.values()))["rank"] == 1 for e in entries)  # greedy: sampled = top 1


def test_trtllm_named_tensors_through_triton(server):
    base = {"text_input": text("hello"), "max_tokens": np.array([8], dtype=np.int32), "ignore_eos": np.array([True])}
    seeded = {**base, "temperature": np.array([1.0], dtype=np.float32), "seed": np.array([9], dtype=np.uint64)}
    greedy = {**base, "temperature": np.array([0.0], dtype=np.float32)}
    penalised = {**greedy, "frequency_penalty": np.array([1.0], dtype=np.float32),
                 "presence_penalty": np.array([0.5], dtype=np.float32),
                 "repetition_penalty": np.array([1.1], dtype=np.float32)}
    runs = [generate(server.grpc_url, tensors) for tensors in (seeded, seeded, greedy, penalised)]
    assert all(r.error is None and len(r.ids) == 8 for r in runs)
    assert runs[0].ids == runs[1].ids  # `seed` seeds the request
    assert runs[3].ids != runs[2].ids  # the demo model repeats itself when greedy; the penalties stop that


def test_genai_perf_over_grpc_with_string_max_tokens(server, demo_model, tmp_path):
    """genai-perf's vLLM-over-KServe input sends max_tokens as a string in sampling_parameters."""
    before = metric(server.metrics(), "lp:generation_tokens_total")
    subprocess.run(
        [str(ROOT / ".venv/bin/genai-perf"), "profile", "-m", "laminar", "--endpoint-type", "kserve",
         "--backend", "vllm", "--streaming", "-u", server.grpc_url, "--tokenizer", str(demo_model),
         "--synthetic-input-tokens-mean", "32", "--synthetic-input-tokens-stddev", "0",
         "--output-tokens-mean", "8", "--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true",
         "--concurrency", "2", "--request-count", "8", "--artifact-dir", str(tmp_path)],
        check=True, cwd=tmp_path, capture_output=True, timeout=300)
    (export,) = tmp_path.glob("**/profile_export_genai_perf.json")
    assert json.loads(export.read_text())["request_count"]["avg"] == 8
    assert metric(server.metrics(), "lp:generation_tokens_total") - before == 8 * 8

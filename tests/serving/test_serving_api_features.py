"""Structured outputs, n > 1, logit_bias and prompt logprobs through tritonserver, with the real
tritonclient (gRPC) and HTTP generate: what the contract in README's Serving interface promises."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import MODES, SLO_MODEL

from laminar.client.grpc_stream import Stream, generate, text
from laminar.client.triton_server import ROOT

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "code", "open"],
          "properties": {"city": {"type": "string", "maxLength": 10},
                         "code": {"type": "integer", "minimum": 0, "maximum": 999},
                         "open": {"type": "boolean"}}}
REGEX = r"\d{3}-[a-z]{2,4}"
CHOICES = ["red", "green", "dark blue"]
EBNF = 'root ::= "<" ("a" | "b" | "c")+ ">"'


def check_schema(value: str) -> None:
    obj = json.loads(value)
    assert list(obj) == ["city", "code", "open"], obj
    assert len(obj["city"]) <= 10 and 0 <= obj["code"] <= 999 and isinstance(obj["open"], bool)


CASES = {
    "json": ({"json": SCHEMA}, check_schema),
    "regex": ({"regex": REGEX}, lambda t: re.fullmatch(REGEX, t) or pytest.fail(t)),
    "choice": ({"choice": CHOICES}, lambda t: t in CHOICES or pytest.fail(t)),
    "grammar": ({"grammar": EBNF}, lambda t: re.fullmatch(r"<[abc]+>", t) or pytest.fail(t)),
}


def request(sampling: dict, stream: bool = False, prompt: str = "The scheduler runs") -> dict[str, np.ndarray]:
    return {"text_input": text(prompt), "stream": np.array([stream]), "exclude_input_in_output": np.array([True]),
            "sampling_parameters": text(json.dumps(sampling))}


def wait_samples(url: str, tensors: dict, n: int, model: str = "laminar", timeout: float = 120.0) -> list[dict]:
    """Every response of an n-sample request: done once n responses carried a finish reason."""
    stream = Stream(url)
    try:
        result = stream.send("r", tensors, model)
        deadline = time.monotonic() + timeout
        while sum(bool(r["finish_reason"][0]) for r in result.responses) < n and result.error is None:
            assert time.monotonic() < deadline, "not every sample finished"
            time.sleep(0.05)
        assert result.error is None, result.error
        return result.responses
    finally:
        stream.close()


@pytest.mark.parametrize("model", [*MODES.values(), SLO_MODEL])
@pytest.mark.parametrize("case", CASES)
def test_constrained_outputs_validate(server, model, case):
    spec, check = CASES[case]
    for seed in range(2):
        result = generate(server.grpc_url, request({"structured_outputs": spec, "temperature": 1.0, "seed": seed,
                                                    "max_tokens": 200}), model=model)
        assert result.error is None, result.error
        assert result.finish_reason == "stop"
        check(result.text)


@pytest.mark.parametrize("spec, field", [
    ({"regex": "(("}, "structured_outputs.regex"),
    ({"json": "{broken"}, "structured_outputs.json"),
    ({"grammar": "root ::= undefined_rule"}, "structured_outputs.grammar"),
    ({"choice": []}, "structured_outputs.choice"),
])
def test_bad_grammar_is_a_400_and_the_server_keeps_serving(server, spec, field):
    result = generate(server.grpc_url, request({"structured_outputs": spec}))
    assert result.error is not None and field in result.error, result.error
    body = {"text_input": "hi", "sampling_parameters": json.dumps({"structured_outputs": spec})}
    req = urllib.request.Request(f"{server.http_url}/v2/models/laminar/generate", data=json.dumps(body).encode())
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    assert err.value.code == 400 and field in err.value.read().decode()
    good = generate(server.grpc_url, request({"structured_outputs": CASES["regex"][0], "max_tokens": 50}))
    assert good.error is None and re.fullmatch(REGEX, good.text)


@pytest.mark.parametrize("stream", [False, True])
def test_n_samples_stream_with_their_index(server, stream):
    sampling = {"n": 3, "seed": 11, "max_tokens": 5, "ignore_eos": True, "structured_outputs": {"regex": "[a-z]{5}"}}
    responses = wait_samples(server.grpc_url, request(sampling, stream), 3)
    by_index: dict[int, list[dict]] = {}
    for r in responses:
        by_index.setdefault(int(r["sequence_index"][0]), []).append(r)
    assert sorted(by_index) == [0, 1, 2]
    for rs in by_index.values():
        assert [bool(r["finish_reason"][0]) for r in rs] == [False] * (len(rs) - 1) + [True]
        assert re.fullmatch("[a-z]{5}", "".join(r["text_output"][0].decode() for r in rs))
        assert stream or len(rs) == 1  # non-streaming: one response per sample
    # The TensorRT-LLM tensor asks for the same.
    tensors = {**request({"seed": 11, "max_tokens": 2}), "num_return_sequences": np.array([2], dtype=np.int32)}
    assert sorted(int(r["sequence_index"][0]) for r in wait_samples(server.grpc_url, tensors, 2)) == [0, 1]


def test_prompt_logprobs_and_logit_bias(server):
    prompt = "The scheduler runs the experts"
    result = generate(server.grpc_url, {**request({"prompt_logprobs": 2, "max_tokens": 3, "temperature": 0},
                                                  prompt=prompt),
                                        "return_num_input_tokens": np.array([True])})
    assert result.error is None, result.error
    entries = json.loads(result.responses[0]["prompt_logprobs"][0])
    assert entries[0] is None and len(entries) == int(result.responses[0]["num_input_tokens"][0])
    for entry in entries[1:]:
        first = next(iter(entry.values()))  # the prompt token itself, then its top 2
        assert set(first) == {"logprob", "rank", "decoded_token"} and first["logprob"] <= 0
        assert 1 <= len(entry) <= 3
    biased = generate(server.grpc_url, request({"logit_bias": {"42": 100}, "max_tokens": 4, "ignore_eos": True}))
    assert biased.error is None and biased.ids == [42] * 4


def test_readme_structured_outputs_example_runs(server):
    """The Python block after README's "Structured outputs" paragraph, against this server."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Structured outputs.**"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]
    code = code.replace("http://localhost:8000", server.http_url)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip().endswith(" stop") and "'city'" in run.stdout

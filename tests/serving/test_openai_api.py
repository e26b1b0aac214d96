"""End to end: the official `openai` client against laminar.openai_api, in front of the real
tritonserver of the session, checked against the engine run in the test process."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import openai
import pytest
from test_serving_server import metric

from laminar import SamplingParams
from laminar.client.openai_stack import wait_http
from laminar.client.triton_server import ROOT, free_port, free_ports

PROMPT = "The quick brown fox"
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}
# The demo checkpoint's chat template, written out: the API must render exactly this.
CHAT_PROMPT = "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def api_url(server, demo_model):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "laminar.openai_api", "--triton-url", server.grpc_url,
                             "--checkpoint", str(demo_model), "--host", "127.0.0.1", "--port", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def client(api_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url, api_key="unused", max_retries=0)


def offline(engine, prompt: str, **params):
    """Text, token ids and logprobs of the in-process engine for one request."""
    engine.add_request("ref", prompt, SamplingParams(**params))
    text, ids, logprobs = "", [], []
    while engine.has_unfinished_requests():
        for out in engine.step():
            text, ids = text + out.new_text, ids + out.new_token_ids
            logprobs += out.logprobs or []
    return text, ids, logprobs


def test_completions_match_the_engine_streaming_or_not(client, offline_engines):
    engine = offline_engines["layered"]
    assert [m.id for m in client.models.list()] == ["laminar"]
    want, _, _ = offline(engine, PROMPT, max_tokens=8, temperature=0.0, ignore_eos=True)
    r = client.completions.create(model="laminar", prompt=PROMPT, max_tokens=8, **GREEDY)
    (choice,) = r.choices
    assert (choice.text, choice.finish_reason) == (want, "length")
    n_prompt = len(engine.tokenizer.encode(PROMPT))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 8, n_prompt + 8)
    chunks = list(client.completions.create(model="laminar", prompt=PROMPT, max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks[:-1]) == want
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * 7 + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


def test_usage_counts_cached_prompt_tokens(client, offline_engines):
    """The second request with a prompt finds all its full blocks but the last token's in the cache."""
    prompt = "The prefix cache keeps the KV blocks of prompts it has seen, " * 4
    n_prompt = len(offline_engines["layered"].tokenizer.encode(prompt))
    cached = [client.completions.create(model="laminar", prompt=prompt, max_tokens=2, **GREEDY)
              .usage.prompt_tokens_details.cached_tokens for _ in range(2)]
    assert cached == [0, (n_prompt - 1) // 16 * 16] and n_prompt > 32


def test_chat_renders_the_checkpoint_template(client, offline_engines):
    want, _, _ = offline(offline_engines["layered"], CHAT_PROMPT, max_tokens=6, temperature=0.0, ignore_eos=True)
    messages = [{"role": "user", "content": "hi there"}]
    r = client.chat.completions.create(model="laminar", messages=messages, max_completion_tokens=6, **GREEDY)
    assert (r.choices[0].message.role, r.choices[0].message.content) == ("assistant", want)
    assert r.usage.prompt_tokens == len(offline_engines["layered"].tokenizer.encode(CHAT_PROMPT))
    chunks = list(client.chat.completions.create(model="laminar", messages=messages, max_tokens=6, stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_ends_the_text_before_it(client):
    full = client.completions.create(model="laminar", prompt=PROMPT, max_tokens=16, **GREEDY).choices[0].text
    stop = full[6:9]
    r = client.completions.create(model="laminar", prompt=PROMPT, max_tokens=16, stop=[stop], **GREEDY)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (full[:full.index(stop)], "stop")


def test_seed_makes_sampling_reproducible(client):
    def sample(seed: int) -> str:
        messages = [{"role": "user", "content": "tell me a story"}]
        return client.chat.completions.create(model="laminar", messages=messages, max_tokens=16, seed=seed,
                                              temperature=1.0).choices[0].message.content
    first = sample(5)
    assert sample(5) == first
    assert sample(6) != first


def test_penalties_and_logprobs_match_the_engine(client, offline_engines):
    params = {"max_tokens": 40, "temperature": 0.0, "ignore_eos": True, "frequency_penalty": 1.5,
              "presence_penalty": 0.5, "repetition_penalty": 1.2}
    want_text, want_ids, want_lps = offline(offline_engines["layered"], CHAT_PROMPT, logprobs=3, **params)
    plain_text, _, _ = offline(offline_engines["layered"], CHAT_PROMPT, max_tokens=40, temperature=0.0, ignore_eos=True)
    assert want_text != plain_text, "the penalties change this greedy output"
    r = client.chat.completions.create(
        model="laminar", messages=[{"role": "user", "content": "hi there"}], max_tokens=40, temperature=0.0,
        frequency_penalty=1.5, presence_penalty=0.5, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True, "repetition_penalty": 1.2})
    assert r.choices[0].message.content == want_text
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx([lp.logprob for lp in want_lps], abs=1e-4)
    for c, lp in zip(content, want_lps):
        assert [t.logprob for t in c.top_logprobs] == pytest.approx([v for _, v in lp.top], abs=1e-4)
        assert c.top_logprobs[0].token == c.token  # greedy: the sampled token is the most likely
    legacy = client.completions.create(model="laminar", prompt=PROMPT, max_tokens=4, logprobs=2, **GREEDY).choices[0]
    assert "".join(legacy.logprobs.tokens) == legacy.text
    for token, logprob, top in zip(legacy.logprobs.tokens, legacy.logprobs.token_logprobs, legacy.logprobs.top_logprobs):
        assert len(top) == 2 and top[token] == logprob == max(top.values())


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"n": 0}, "n"),
    ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"max_tokens": "many"}, "max_tokens"),
    ({"prompt": "word " * 5000}, None),  # longer than max_model_len: refused by the model itself
])
def test_bad_parameters_get_400_with_an_openai_error(client, kwargs, param):
    request = {"model": "laminar", "prompt": PROMPT, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**request)
    error = e.value.body
    assert e.value.status_code == 400 and error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt=PROMPT)


def test_client_disconnect_cancels_and_frees_the_kv_blocks(server, api_url):
    def generated() -> float:
        return metric(server.metrics(), "lp:generation_tokens_total")

    def settled() -> None:
        deadline = time.monotonic() + 30
        while metric(server.metrics(), "lp:num_requests_running") > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        metrics = server.metrics()
        assert metric(metrics, "lp:num_requests_running") == 0
        assert metric(metrics, "lp:kv_cache_usage_perc") == 0.0

    def post(stream: bool, timeout: float):
        body = {"model": "laminar", "prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True, "stream": stream}
        request = urllib.request.Request(f"{api_url}/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        return urllib.request.urlopen(request, timeout=timeout)

    before = generated()
    with post(stream=True, timeout=60) as r:
        assert r.readline().startswith(b"data: ")
        assert metric(server.metrics(), "lp:kv_cache_usage_perc") > 0
    settled()
    before_plain = generated()
    assert before_plain - before < 4000, "the stream was cancelled, not run to the end"
    with pytest.raises(TimeoutError):  # a non-streaming request whose client gives up
        post(stream=False, timeout=2)
    settled()
    assert generated() - before_plain < 4000


def test_aiperf_with_server_token_counts(api_url, demo_model, tmp_path):
    subprocess.run(
        [str(ROOT / ".venv/bin/aiperf"), "profile", "--model", "laminar", "--url", api_url.removesuffix("/v1"),
         "--endpoint-type", "chat", "--streaming", "--use-server-token-count", "--tokenizer", str(demo_model),
         "--synthetic-input-tokens-mean", "32", "--synthetic-input-tokens-stddev", "0",
         "--output-tokens-mean", "8", "--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true",
         "--concurrency", "2", "--request-count", "8", "--ui-type", "none", "--artifact-dir", str(tmp_path)],
        check=True, cwd=tmp_path, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "profile_export_aiperf.json").read_text())
    assert result["request_count"]["avg"] == 8 and not result["error_summary"]
    osl = result["output_sequence_length"]
    assert osl["min"] == osl["max"] == 8  # from `usage`: the tokens the server generated
    assert result["time_to_first_token"]["avg"] > 0


def readme_example() -> str:
    """The first Python block of the README's OpenAI API section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## OpenAI API"):]
    return section[section.index("```python\n") + 10:section.index("```\n", section.index("```python"))]


def test_build_sh_serve_runs_the_readme_example(tmp_path):
    """A newcomer's path: `./build.sh serve`, then the README's client example against it."""
    http, grpc, metrics, api = free_ports(4)
    log = open(tmp_path / "serve.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINAR_")}
    serve = subprocess.Popen(
        [str(ROOT / "build.sh"), "serve", "--http-port", str(http), f"--grpc-port={grpc}",
         "--metrics-port", str(metrics)], env={**env, "LAMINAR_OPENAI_PORT": str(api)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{api}/health", serve, timeout=240)
        example = readme_example().replace("localhost:9000", f"localhost:{api}")
        run = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        text, usage = run.stdout.split("\n")[:2]  # the streamed text, then the last chunk's usage
        assert text.strip() and "completion_tokens=" in usage, run.stdout
    finally:
        serve.send_signal(signal.SIGTERM)  # tritonserver: build.sh exec'd it
        serve.wait(60)
        log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and port_open(api):
        time.sleep(0.3)
    assert not port_open(api), "the OpenAI API outlived tritonserver"


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_request_translation_without_a_server():
    from laminar.openai_api.protocol import UNLIMITED_TOKENS, ChatCompletionRequest, CompletionRequest
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                   {"type": "text", "text": "b"}]}],
                                 max_tokens=5, max_completion_tokens=7, logprobs=True, seed=3)
    assert chat.sampling() == {"max_tokens": 7, "seed": 3, "logprobs": 0}
    assert chat.template_messages() == [{"role": "user", "content": "ab"}]
    assert ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "a"}]).sampling() == {
        "max_tokens": UNLIMITED_TOKENS}
    legacy = CompletionRequest(model="m", prompt=[[1, 2, 3]], logprobs=2, stop="x")
    assert legacy.prompt_inputs() == [[1, 2, 3]]
    assert legacy.sampling() == {"max_tokens": 16, "stop": "x", "logprobs": 2}

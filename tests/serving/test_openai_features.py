"""End to end through tritonserver and the OpenAI app with the official client: prompt lists,
echo, tools in the demo's Qwen3 template, thinking switched off, readiness, structured outputs,
forced tool calls, n, logit_bias and prompt logprobs. Outputs come from the random-weights demo model at temperature
1.0, so every constrained request checks that what came back parses and validates."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest

from laminar.client.openai_stack import wait_http
from laminar.client.triton_server import ROOT, free_port

PROMPT = "The quick brown fox"
GREEDY = {"temperature": 0.0, "extra_body": {"ignore_eos": True}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def start_api(triton_url: str, checkpoint, model: str = "laminar") -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "laminar.openai_api", "--triton-url", triton_url, "--model", model,
                             "--served-model-name", "laminar", "--checkpoint", str(checkpoint),
                             "--host", "127.0.0.1", "--port", str(port)])
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server, demo_model) -> openai.OpenAI:
    proc, url = start_api(server.grpc_url, demo_model)
    try:
        wait_http(f"{url}/health", proc)
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    finally:
        proc.terminate()
        proc.wait(30)


def test_prompt_lists_fan_out_in_order_and_usage_sums(client):
    prompts = [PROMPT, "Once upon a time"]
    singles = [client.completions.create(model="laminar", prompt=p, max_tokens=5, **GREEDY) for p in prompts]
    r = client.completions.create(model="laminar", prompt=prompts, max_tokens=5, **GREEDY)
    assert [(c.index, c.text) for c in r.choices] == [(i, s.choices[0].text) for i, s in enumerate(singles)]
    assert r.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert r.usage.completion_tokens == 10
    chunks = list(client.completions.create(model="laminar", prompt=prompts, max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    for i, single in enumerate(singles):
        assert "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) == single.choices[0].text
    assert chunks[-1].usage.completion_tokens == 10


def test_echo_puts_the_prompt_before_the_text(client):
    plain = client.completions.create(model="laminar", prompt=PROMPT, max_tokens=4, **GREEDY).choices[0].text
    r = client.completions.create(model="laminar", prompt=PROMPT, max_tokens=4, echo=True, **GREEDY)
    assert r.choices[0].text == PROMPT + plain
    chunks = list(client.completions.create(model="laminar", prompt=PROMPT, max_tokens=4, echo=True, stream=True,
                                            **GREEDY))
    assert "".join(c.choices[0].text for c in chunks) == PROMPT + plain


def test_tools_and_tool_results_go_through_the_template(client):
    """tool_choice auto: the model may answer in text; the conversation with a call and its
    result renders (the prompt grows by the template's tool turns)."""
    base = client.chat.completions.create(model="laminar", messages=USER, max_tokens=3, **GREEDY)
    auto = client.chat.completions.create(model="laminar", messages=USER, tools=[WEATHER], max_tokens=3, **GREEDY)
    assert auto.usage.prompt_tokens > base.usage.prompt_tokens + 20  # the signatures are in the prompt
    none = client.chat.completions.create(model="laminar", messages=USER, tools=[WEATHER], tool_choice="none",
                                          max_tokens=3, **GREEDY)
    assert none.usage.prompt_tokens == base.usage.prompt_tokens
    assert none.choices[0].message.content == base.choices[0].message.content
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}
    history = USER + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model="laminar", messages=history, tools=[WEATHER], max_tokens=3, **GREEDY)
    assert r.usage.prompt_tokens > auto.usage.prompt_tokens and r.choices[0].finish_reason == "length"


def test_enable_thinking_false_is_honoured(client, demo_model):
    from laminar.openai_api.chat_template import ChatTemplate
    template = ChatTemplate(str(demo_model))
    r = client.chat.completions.create(model="laminar", messages=USER, max_tokens=3,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}, "ignore_eos": True})
    rendered = template.render(USER, None, {"enable_thinking": False})
    assert rendered.endswith("<think>\n\n</think>\n\n")
    assert r.usage.prompt_tokens == len(template._tokenizer.encode(rendered))


def test_not_ready_model_answers_503_with_an_openai_error(server, demo_model):
    """An API whose model is not loaded (as while tritonserver starts): every endpoint 503s."""
    proc, url = start_api(server.grpc_url, demo_model, model="not_loaded")
    try:
        def get(path: str, body: dict | None = None) -> tuple[int, dict]:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())
        deadline_proc = wait_for_port(url, proc)
        assert deadline_proc
        for path, body in [("/v1/models", None), ("/v1/completions", {"model": "laminar", "prompt": "a"}),
                           ("/v1/chat/completions", {"model": "laminar", "messages": USER})]:
            status, error = get(path, body)
            assert status == 503 and error["error"]["type"] == "server_error", (path, error)
            assert not re.search(r"grpc|StatusCode|failed to connect|ipv4", error["error"]["message"], re.I)
    finally:
        proc.terminate()
        proc.wait(30)


def wait_for_port(url: str, proc: subprocess.Popen) -> bool:
    """The app answers (here: /health's 503) before its model is ready."""
    try:
        wait_http(f"{url}/health", proc, timeout=30)
    except TimeoutError:
        pass
    return proc.poll() is None


# --- Structured outputs, forced tool calls, n (the engine's half of the contract) --------------

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
          "required": ["name", "age"], "additionalProperties": False}


def check_schema(value, schema: dict) -> None:
    """The JSON-schema subset the tests use (type, properties, required, enum, ranges, lengths)."""
    if "enum" in schema:
        assert value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict)
        assert set(schema.get("required", [])) <= set(value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(schema["properties"])
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check_schema(value[key], sub)
    elif kind == "string":
        assert isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
    elif kind == "integer":
        assert isinstance(value, int) and schema.get("minimum", value) <= value <= schema.get("maximum", value)
    elif kind == "array":
        assert isinstance(value, list) and len(value) <= schema.get("maxItems", len(value))
        for item in value:
            check_schema(item, schema["items"])


@pytest.mark.parametrize("strict", [True, False])
def test_json_schema_response_format_validates(client, strict):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": strict}}
    r = client.chat.completions.create(model="laminar", messages=USER, response_format=fmt, temperature=1.0,
                                       seed=1, max_tokens=200, n=1)
    check_schema(json.loads(r.choices[0].message.content), SCHEMA)
    r = client.chat.completions.create(model="laminar", messages=USER, response_format={"type": "json_object"},
                                       temperature=1.0, seed=2, max_tokens=200)
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_regex_choice_and_grammar_constrain_completions(client):
    def complete(**constraint) -> str:
        return client.completions.create(model="laminar", prompt=PROMPT, max_tokens=40, temperature=1.0,
                                         extra_body={"structured_outputs": constraint}).choices[0].text
    assert re.fullmatch(r"[a-z]{3,8}-\d{2}", complete(regex=r"[a-z]{3,8}-\d{2}"))
    assert complete(choice=["red fox", "blue whale"]) in ("red fox", "blue whale")
    assert re.fullmatch(r"(ab)+", complete(grammar='root ::= ("ab")+'))
    with pytest.raises(openai.BadRequestError) as e:
        complete(regex="(unclosed")
    assert "structured_outputs" in str(e.value)


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_calls_are_valid_for_their_schemas(client, parallel):
    r = client.chat.completions.create(model="laminar", messages=USER, tools=[WEATHER, TIME], tool_choice="required",
                                       parallel_tool_calls=parallel, temperature=1.0, seed=3, max_tokens=300)
    choice = r.choices[0]
    # Random weights may go on calling in parallel until max_tokens: the complete calls still count.
    assert choice.finish_reason in (("tool_calls", "length") if parallel else ("tool_calls",))
    assert choice.message.tool_calls and (parallel or len(choice.message.tool_calls) == 1)
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for call in choice.message.tool_calls:
        check_schema(json.loads(call.function.arguments), tools[call.function.name])


def test_named_tool_call_streams_as_tool_call_deltas(client):
    chunks = list(client.chat.completions.create(
        model="laminar", messages=USER, tools=[WEATHER, TIME], stream=True, temperature=1.0, seed=4, max_tokens=300,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    assert [c.function.name for c in calls] == ["get_weather"] and calls[0].index == 0 and calls[0].id
    check_schema(json.loads("".join(c.function.arguments for c in calls)), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_reasoning_is_split_from_content_streamed_or_not(client):
    """A regex makes the random model think in Qwen3's syntax; the API splits it out."""
    extra = {"structured_outputs": {"regex": r"<think>[a-z ]{5,20}</think>\n\n[a-z ]{5,20}"}}
    r = client.chat.completions.create(model="laminar", messages=USER, temperature=1.0, seed=5, max_tokens=60,
                                       extra_body=extra)
    message = r.choices[0].message
    assert re.fullmatch(r"[a-z ]{5,20}", message.reasoning_content) and re.fullmatch(r"[a-z ]{5,20}", message.content)
    chunks = list(client.chat.completions.create(model="laminar", messages=USER, temperature=1.0, seed=5,
                                                 max_tokens=60, extra_body=extra, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == message.reasoning_content
    assert "".join(d.content or "" for d in deltas) == message.content


def test_n_samples_are_indexed_and_counted(client):
    r = client.completions.create(model="laminar", prompt=[PROMPT, "Once"], n=3, max_tokens=6, temperature=1.0,
                                  seed=7, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == list(range(6)) and r.usage.completion_tokens == 36
    assert len({c.text for c in r.choices[:3]}) > 1  # each sample its own seed stream
    chunks = list(client.chat.completions.create(model="laminar", messages=USER, n=2, max_tokens=4, temperature=1.0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 2
    assert chunks[-1].usage.completion_tokens == 8


def test_logit_bias_and_prompt_logprobs(client, offline_engines):
    tokenizer = offline_engines["layered"].tokenizer
    token = tokenizer.encode(" fox")[-1]
    r = client.completions.create(model="laminar", prompt=PROMPT, max_tokens=4, logit_bias={str(token): 100}, **GREEDY)
    assert r.choices[0].text == tokenizer.decode([token]) * 4
    r = client.completions.create(model="laminar", prompt=PROMPT, max_tokens=3, echo=True, logprobs=2, **GREEDY)
    lp = r.choices[0].logprobs
    n_prompt = len(tokenizer.encode(PROMPT))
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == n_prompt + 3
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]


def readme_examples() -> list[str]:
    """The Python blocks of the README's OpenAI API section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## OpenAI API"):]
    section = section[:section.index("\n## ", 3)]
    return re.findall(r"```python\n(.*?)```\n", section, re.S)


@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_readme_examples_run_as_written(client, index):
    example = readme_examples()[index].replace("http://localhost:9000/v1", str(client.base_url).rstrip("/"))
    run = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr

"""The OpenAI layer without a server: output parsing per family (fed whole and one character at a
time, since markers split across stream deltas), request translation and the demo template."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest

from laminar.openai_api.families import HarmonyFamily, Qwen3Family
from laminar.openai_api.output_parser import HarmonyParser, Parsed, Qwen3Parser
from laminar.openai_api.protocol import ChatCompletionRequest, CompletionRequest
from laminar.sampling_params import SamplingParams

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def run(parser, text: str, piece: int) -> Parsed:
    out = Parsed()
    for i in range(0, len(text), piece):
        out += parser.feed(text[i:i + piece])
    out += parser.finish()
    return out


def summary(p: Parsed) -> tuple:
    return p.reasoning, p.content, [(c.name, json.loads(c.arguments)) for c in p.tool_calls]


@pytest.mark.parametrize("piece", [1, 3, 1000])
@pytest.mark.parametrize("text, in_reasoning, want", [
    ("<think>why</think>\n\nhello", False, ("why", "hello", [])),
    ("why</think>hello", True, ("why", "hello", [])),
    ("hello <b>", False, ("", "hello <b>", [])),
    ("<think>unfinished", False, ("unfinished", "", [])),
    ("I'll check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n"
     "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>", False,
     ("", "I'll check.\n", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})])),
    ("<tool_call>not json</tool_call>", False, ("", "<tool_call>not json</tool_call>", [])),
    ("<tool_call>{\"name\": \"f\", \"arguments\": {", False, ("", "<tool_call>{\"name\": \"f\", \"arguments\": {", [])),
])
def test_qwen3_parser_splits_reasoning_content_and_calls(text, in_reasoning, want, piece):
    assert summary(run(Qwen3Parser(in_reasoning, tools=True), text, piece)) == want


def test_qwen3_parser_without_tools_leaves_calls_in_content():
    text = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>"
    assert summary(run(Qwen3Parser(False, tools=False), text, 2)) == ("", text, [])


HARMONY = ("<|channel|>analysis<|message|>Need weather.<|end|>"
           "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
           "{\"city\": \"Paris\"}<|call|>")


@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_harmony_parser_reads_channels_and_calls(piece):
    assert summary(run(HarmonyParser(tools=True), HARMONY, piece)) == (
        "Need weather.", "", [("get_weather", {"city": "Paris"})])
    final = "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>Hi <b>!<|return|>"
    assert summary(run(HarmonyParser(tools=False), final, piece)) == ("think", "Hi <b>!", [])
    assert summary(run(HarmonyParser(tools=False), "<|channel|>final<|message|>cut", piece)) == ("", "cut", [])


def test_forced_tool_calls_are_structural_tags_in_the_family_syntax():
    def sampling(family, **kwargs):
        request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
                                        **kwargs)
        return request.sampling(family)

    tag = sampling(Qwen3Family(), tool_choice="required", parallel_tool_calls=False)["structured_outputs"]
    fmt = tag["structural_tag"]["format"]
    assert fmt["type"] == "tags_with_separator" and fmt["at_least_one"] and fmt["stop_after_first"]
    (call,) = fmt["tags"]
    # The grammar's text is what the parser reads back as a call.
    text = call["begin"] + '{"city": "Oslo"}' + call["end"]
    assert summary(run(Qwen3Parser(False, tools=True), text, 5))[2] == [("get_weather", {"city": "Oslo"})]
    assert call["content"]["json_schema"] == WEATHER["function"]["parameters"]
    named = sampling(HarmonyFamily(), tool_choice={"type": "function", "function": {"name": "get_weather"}})
    tag = named["structured_outputs"]["structural_tag"]["format"]
    assert named["skip_special_tokens"] is False
    text = tag["begin"] + '{"city": "Oslo"}' + tag["end"]
    assert summary(run(HarmonyParser(tools=True), text, 5))[2] == [("get_weather", {"city": "Oslo"})]
    assert "structured_outputs" not in sampling(Qwen3Family(), tool_choice="auto")


@pytest.mark.parametrize("kwargs, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"structured_outputs": {"regex": "a+", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}, "structured_outputs"),
    ({"n": 0}, "n"),
    pytest.param({"logit_bias": {"5": 101.0}}, "logit_bias", marks=pytest.mark.skipif(
        "logit_bias" not in {f.name for f in fields(SamplingParams)}, reason="SamplingParams lacks logit_bias")),
])
def test_bad_constraints_are_400s_naming_the_field(kwargs, param):
    from laminar.openai_api.errors import APIError
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=[WEATHER], **kwargs)
    with pytest.raises(APIError) as e:
        request.sampling(Qwen3Family())
    assert (e.value.status, e.value.param) == (400, param)


def test_response_formats_and_completion_options_translate_to_the_contract():
    def chat(**kwargs):
        return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], **kwargs).sampling()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for strict in (True, False):
        fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": strict}}
        assert chat(response_format=fmt)["structured_outputs"] == {"json": schema}
    assert chat(response_format={"type": "json_object"})["structured_outputs"] == {"json_object": True}
    assert chat(structured_outputs={"choice": ["a", "b"]}, n=3)["structured_outputs"] == {"choice": ["a", "b"]}
    legacy = CompletionRequest(model="m", prompt=["a", "b"], echo=True, logprobs=2, n=2, logit_bias={"7": -100})
    assert legacy.prompt_inputs() == ["a", "b"]
    assert legacy.sampling() == {"max_tokens": 16, "logprobs": 2, "n": 2, "logit_bias": {"7": -100.0},
                                 "prompt_logprobs": 2}


def test_demo_template_renders_tools_tool_results_and_thinking(demo_model):
    from laminar.openai_api.chat_template import ChatTemplate
    template = ChatTemplate(str(demo_model))
    request = ChatCompletionRequest(model="m", tools=[WEATHER], chat_template_kwargs={"enable_thinking": False},
                                    messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
    prompt = template.render(request.template_messages(), request.template_tools(), request.template_kwargs())
    assert json.dumps(WEATHER) in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not Qwen3Family().parser(prompt, True)._mode == "reasoning"


@pytest.mark.parametrize("family", [Qwen3Family(), HarmonyFamily()], ids=lambda f: f.name)
def test_tool_grammars_compile_in_xgrammar_and_accept_only_calls(family):
    """The structural tags sent for required and named tool_choice, compiled by the engine's
    grammar library: they accept the calls the parser reads (one when not parallel) and nothing
    else, not even an empty answer."""
    xgr = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from laminar.openai_api.families import forced_tool_calls, named_tool_call
    functions = [WEATHER["function"], TIME_FUNCTION]

    def call(function: dict, arguments: str) -> str:
        tag = family.tool_tag(function["name"], function["parameters"])
        return tag["begin"] + arguments + tag["end"]
    one = call(WEATHER["function"], '{"city": "Paris"}')
    two = one + family.call_separator + call(TIME_FUNCTION, '{"zone": "UTC"}')
    for parallel in (True, False):
        grammar = xgr.Grammar.from_structural_tag(json.dumps(forced_tool_calls(family, functions, parallel)["structural_tag"]))
        assert accepts(grammar, one) and accepts(grammar, two) == parallel
        assert not accepts(grammar, "") and not accepts(grammar, "hello")
        assert not accepts(grammar, call(WEATHER["function"], '{"town": "Paris"}'))
    named = xgr.Grammar.from_structural_tag(json.dumps(named_tool_call(family, functions[0])["structural_tag"]))
    assert accepts(named, one) and not accepts(named, call(TIME_FUNCTION, '{"zone": "UTC"}'))
    parsed = run(family.parser("", tools=True), two, 3)
    assert [c.name for c in parsed.tool_calls] == ["get_weather", "get_time"]


TIME_FUNCTION = {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                                                    "required": ["zone"]}}


def delta(text: str, index: int = 0, finish: str | None = None, **kwargs):
    from laminar.openai_api.triton_stream import Delta
    return Delta(text=text, num_tokens=1, num_prompt_tokens=3, num_cached_tokens=0, finish_reason=finish,
                 logprobs=kwargs.pop("logprobs", None), index=index, **kwargs)


def lp(token: str, logprob: float, rank: int = 1) -> dict:
    return {"logprob": logprob, "rank": rank, "decoded_token": token}


def test_echo_with_logprobs_puts_the_prompt_tokens_first():
    """The contract's prompt_logprobs (first entry null, then the prompt token and its top-k)
    become completions' tokens / token_logprobs / top_logprobs / text_offset."""
    from laminar.openai_api.formats import Completions, Responder
    prompt = [None, {"7": lp(" quick", -2.0, 3), "8": lp(" slow", -0.5, 1)}, {"9": lp(" brown", -1.5, 1)}]
    generated = [{"5": lp(" fox", -1.0, 1)}]
    for stream in (False, True):
        responder = Responder(Completions(1, echo=["The quick brown"]), "m", include_usage=False)
        first = delta(" fox", finish="length", logprobs=generated, prompt_logprobs=prompt)
        choice = responder.chunk(0, first)["choices"][0] if stream else responder.response([(0, first)])["choices"][0]
        assert choice["text"] == "The quick brown fox"
        assert choice["logprobs"] == {"tokens": ["The", " quick", " brown", " fox"],
                                      "token_logprobs": [None, -2.0, -1.5, -1.0],
                                      "top_logprobs": [None, {" slow": -0.5}, {" brown": -1.5}, {" fox": -1.0}],
                                      "text_offset": [0, 3, 9, 15]}


def test_n_chat_choices_stream_their_own_tool_calls_and_usage_sums():
    from laminar.openai_api.formats import ChatCompletions, Responder
    responder = Responder(ChatCompletions(None, lambda: Qwen3Parser(False, tools=True)), "m", True, prompts=1, n=2)
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    chunks = [responder.chunk(0, d) for d in (
        delta(call[:20], 0), delta("plain", 1), delta(call[20:], 0), delta(" text", 1, "length"), delta("", 0, "stop"))]
    by_index: dict[int, list] = {0: [], 1: []}
    for chunk in filter(None, chunks):
        by_index[chunk["choices"][0]["index"]].append(chunk["choices"][0])
    assert by_index[0][0]["delta"]["role"] == "assistant" and by_index[1][0]["delta"]["role"] == "assistant"
    calls = [c for choice in by_index[0] for c in choice["delta"].get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        (0, "get_weather", {"city": "Oslo"})]
    assert by_index[0][-1]["finish_reason"] == "tool_calls" and by_index[1][-1]["finish_reason"] == "length"
    assert "".join(c["delta"].get("content", "") for c in by_index[1]) == "plain text"
    assert responder.usage_chunk()["usage"]["completion_tokens"] == 5

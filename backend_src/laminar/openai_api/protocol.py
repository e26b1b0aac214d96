"""OpenAI request bodies and their translation into Laminar sampling parameters.

Types are checked by pydantic; values by laminar.SamplingParams itself, so the HTTP API and the
Triton model accept exactly the same ranges. Parameters that are part of the OpenAI API but that
Laminar cannot honour (suffix, best_of > n, image parts, ...) are refused with a 400 rather than
ignored. Unknown fields are ignored, as OpenAI-compatible servers (vLLM) do.
"""
from __future__ import annotations

import json
from dataclasses import fields as dataclass_fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from laminar.openai_api.errors import bad_request
from laminar.openai_api.families import Family, PlainFamily, forced_tool_calls, named_tool_call
from laminar.sampling_params import STRUCTURED_KINDS, SamplingParams

# Without max_tokens a chat completion runs until a stop condition or max_model_len.
UNLIMITED_TOKENS = 2**31 - 1
# The OpenAI API's default for the legacy completions endpoint.
COMPLETION_DEFAULT_MAX_TOKENS = 16


class StreamOptions(BaseModel):
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = "response"
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    def structured(self) -> dict[str, Any] | None:
        """Strict or not, a schema is enforced by the grammar (as vLLM and SGLang do)."""
        if self.type == "json_object":
            return {"json_object": True}
        if self.type == "json_schema":
            if self.json_schema is None or self.json_schema.json_schema is None:
                raise bad_request("response_format.json_schema.schema is required", "response_format")
            return {"json": self.json_schema.json_schema}
        return None


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    """None-valued fields dropped; the rest checked by SamplingParams (the keys it knows: the
    contract's newer keys are checked by the model when it receives them)."""
    fields = {k: v for k, v in fields.items() if v is not None}
    known = {f.name for f in dataclass_fields(SamplingParams)}
    try:
        SamplingParams.from_dict({k: v for k, v in fields.items() if k in known})
    except ValueError as e:
        param = next((name for name in fields if str(e).startswith(name)), None)
        raise bad_request(str(e), param) from None
    return fields


def _structured(spec: dict[str, Any], param: str) -> dict[str, Any]:
    """vLLM's structured_outputs object reduced to the one constraint it sets."""
    chosen = {k: v for k, v in spec.items() if k in STRUCTURED_KINDS and v not in (None, False)}
    if len(chosen) != 1:
        raise bad_request(f"{param} must set exactly one of {', '.join(STRUCTURED_KINDS)}", param)
    return chosen


class _GenerationRequest(BaseModel):
    """Fields shared by both endpoints; the vLLM extensions (top_k, min_p, ...) included."""

    model_config = ConfigDict(extra="ignore")

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    prompt_logprobs: int | None = None
    structured_outputs: dict[str, Any] | None = None
    priority: int = 0  # vLLM's; read under the server's prefill_order "priority"
    ttft_slo_ms: float | None = None  # this request's TTFT budget, under prefill_order "deadline"

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling(self, max_tokens: int | None, default_max_tokens: int, logprobs: int | None,
                  structured: dict[str, Any] | None, prompt_logprobs: int | None) -> dict[str, Any]:
        """The sampling_parameters JSON for the Laminar model (keys of the Triton contract)."""
        if self.n < 1:  # n = 1 is not sent: a model without samples takes such requests
            raise bad_request("n must be >= 1", "n")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream=true", "stream_options")
        return _validated({
            "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "stop": self.stop,
            "frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
            "top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
            "ignore_eos": self.ignore_eos, "logprobs": logprobs, "n": self.n if self.n > 1 else None,
            "logit_bias": self.logit_bias or None, "structured_outputs": structured, "prompt_logprobs": prompt_logprobs,
            "priority": self.priority or None, "ttft_slo_ms": self.ttft_slo_ms,
        })

    def _user_structured(self, response_format: ResponseFormat | None = None) -> dict[str, Any] | None:
        """The constraint the client asked for: vLLM's structured_outputs or response_format."""
        wanted = response_format.structured() if response_format is not None else None
        if self.structured_outputs is not None:
            if wanted is not None:
                raise bad_request("set response_format or structured_outputs, not both", "structured_outputs")
            wanted = _structured(self.structured_outputs, "structured_outputs")
        return wanted


class CompletionRequest(_GenerationRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None

    def prompt_inputs(self) -> list[str | list[int]]:
        """Each prompt: a string or token ids; a list of them fans out into one request each."""
        prompt = self.prompt
        prompts = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else [prompt]
        if not prompts or any(not p for p in prompts):
            raise bad_request("prompt is empty", "prompt")
        return prompts

    def sampling(self) -> dict[str, Any]:
        if self.suffix:
            raise bad_request("suffix is not supported", "suffix")
        if self.best_of not in (None, self.n):
            raise bad_request("best_of must equal n (no server-side ranking)", "best_of")
        if self.logprobs is not None and self.logprobs < 0:
            raise bad_request("logprobs must be >= 0", "logprobs")
        # echo with logprobs returns the prompt's logprobs too (what eval harnesses score).
        prompt_logprobs = self.logprobs if self.echo and self.logprobs is not None else self.prompt_logprobs
        return self._sampling(self.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, self.logprobs,
                              self._user_structured(self.response_format), prompt_logprobs)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def as_template_input(self) -> dict[str, Any]:
        """Text parts joined into one string, the form chat templates expect; tool-call
        arguments as objects (chat templates write them out with tojson)."""
        message = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            if any(part.get("type") != "text" for part in self.content):
                raise bad_request("only text content parts are supported", "messages")
            message["content"] = "".join(part.get("text", "") for part in self.content)
        message.setdefault("content", "")
        if "tool_calls" in message:
            message["tool_calls"] = [_template_tool_call(c) for c in message["tool_calls"]]
        return message


def _template_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    try:
        function["arguments"] = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        raise bad_request("tool call arguments must be a JSON object", "messages") from None
    return {**call, "function": function}


class FunctionChoice(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionChoice


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: str | None = None

    def template_messages(self) -> list[dict[str, Any]]:
        if not self.messages:
            raise bad_request("messages must not be empty", "messages")
        return [m.as_template_input() for m in self.messages]

    def functions(self) -> list[dict[str, Any]]:
        """The tools' function definitions, checked; [] when the model may not call any."""
        if not self.tools or self.tool_choice == "none":
            return []
        functions = []
        for tool in self.tools:
            function = tool.get("function")
            if tool.get("type", "function") != "function" or not isinstance(function, dict) or not function.get("name"):
                raise bad_request("each tool must be {type: function, function: {name, parameters}}", "tools")
            functions.append(function)
        return functions

    def template_tools(self) -> list[dict[str, Any]] | None:
        """What the chat template shows the model (nothing when tool_choice is none)."""
        return self.tools if self.functions() else None

    def template_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort is not None:
            kwargs.setdefault("reasoning_effort", self.reasoning_effort)
        return kwargs

    def sampling(self, family: Family = PlainFamily()) -> dict[str, Any]:
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs=true", "top_logprobs")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        structured = self._tool_structured(family) or self._user_structured(self.response_format)
        fields = self._sampling(max_tokens, UNLIMITED_TOKENS, logprobs, structured, self.prompt_logprobs)
        return {**family.sampling, **fields}

    def _tool_structured(self, family: Family) -> dict[str, Any] | None:
        """The grammar that makes a required or named tool call certain; None for auto/none."""
        if self.tool_choice in (None, "auto", "none"):
            return None
        functions = self.functions()
        if not functions:
            raise bad_request("tool_choice needs tools", "tool_choice")
        if isinstance(family, PlainFamily):
            raise bad_request("this model's family has no known tool-call syntax", "tool_choice")
        if self.response_format is not None or self.structured_outputs is not None:
            raise bad_request("a forced tool call cannot be combined with a response format", "tool_choice")
        if self.tool_choice == "required":
            return forced_tool_calls(family, functions, self.parallel_tool_calls)
        named = [f for f in functions if f["name"] == self.tool_choice.function.name]
        if not named:
            raise bad_request(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools",
                              "tool_choice")
        return named_tool_call(family, named[0])

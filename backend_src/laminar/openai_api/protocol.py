"""OpenAI request bodies and their translation into Laminar sampling parameters.

Types are checked by pydantic; values by laminar.SamplingParams itself, so the HTTP API and the
Triton model accept exactly the same ranges. Parameters that are part of the OpenAI API but that
Laminar cannot honour (n > 1, logit_bias, tools, ...) are refused with a 400 rather than ignored.
Unknown fields are ignored, as OpenAI-compatible servers (vLLM) do.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from laminar.openai_api.errors import bad_request
from laminar.sampling_params import SamplingParams

# Without max_tokens a chat completion runs until a stop condition or max_model_len.
UNLIMITED_TOKENS = 2**31 - 1
# The OpenAI API's default for the legacy completions endpoint.
COMPLETION_DEFAULT_MAX_TOKENS = 16


class StreamOptions(BaseModel):
    include_usage: bool = False


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

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling(self, max_tokens: int | None, default_max_tokens: int, logprobs: int | None) -> dict[str, Any]:
        """The sampling_parameters JSON for the Laminar model, validated by SamplingParams."""
        if self.n != 1:
            raise bad_request("only n=1 is supported", "n")
        if self.logit_bias:
            raise bad_request("logit_bias is not supported", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream=true", "stream_options")
        fields = {
            "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "stop": self.stop,
            "frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
            "top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
            "ignore_eos": self.ignore_eos, "logprobs": logprobs,
        }
        fields = {k: v for k, v in fields.items() if v is not None}
        try:
            SamplingParams.from_dict(fields)
        except ValueError as e:
            param = next((name for name in fields if str(e).startswith(name)), None)
            raise bad_request(str(e), param) from None
        return fields


class CompletionRequest(_GenerationRequest):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompt_input(self) -> str | list[int]:
        """One prompt: a string or token ids (a list holding one of them is unwrapped)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise bad_request("only one prompt per request is supported", "prompt")
            prompt = prompt[0]
        if not prompt:
            raise bad_request("prompt is empty", "prompt")
        return prompt

    def sampling(self) -> dict[str, Any]:
        if self.echo:
            raise bad_request("echo is not supported", "echo")
        if self.suffix:
            raise bad_request("suffix is not supported", "suffix")
        if self.best_of not in (None, 1):
            raise bad_request("only best_of=1 is supported", "best_of")
        return self._sampling(self.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS, self.logprobs)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def as_template_input(self) -> dict[str, Any]:
        """Text parts joined into one string, the form chat templates expect."""
        message = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            if any(part.get("type") != "text" for part in self.content):
                raise bad_request("only text content parts are supported", "messages")
            message["content"] = "".join(part.get("text", "") for part in self.content)
        return message


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: ResponseFormat | None = None

    def template_messages(self) -> list[dict[str, Any]]:
        if not self.messages:
            raise bad_request("messages must not be empty", "messages")
        return [m.as_template_input() for m in self.messages]

    def sampling(self) -> dict[str, Any]:
        if self.tools:
            raise bad_request("tools are not supported", "tools")
        if self.response_format is not None and self.response_format.type != "text":
            raise bad_request("only the text response_format is supported", "response_format")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs=true", "top_logprobs")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._sampling(max_tokens, UNLIMITED_TOKENS, logprobs)

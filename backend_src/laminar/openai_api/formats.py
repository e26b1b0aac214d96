"""Model deltas -> OpenAI response bodies and stream chunks, for the two endpoints.

The two endpoints differ only in object names, where the text goes (`text` vs `message` /
`delta`, the latter split into reasoning, content and tool calls by the family's parser) and the
shape of `logprobs`; everything else (ids, choices, usage, finish reasons) is shared.
The model's logprobs arrive as the vLLM backend's JSON: per token, a dict whose first entry is
the sampled (or prompt) token and whose other entries, by rank, its most likely alternatives.

A request may carry several prompts (completions) and n samples of each: the choice of sample s
of prompt p has index p * n + s, and usage sums every prompt and every sample.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from laminar.openai_api.output_parser import OutputParser, Parsed
from laminar.openai_api.triton_stream import Delta

TokenEntries = list[dict[str, dict[str, Any]]]
PromptEntries = list[dict[str, dict[str, Any]] | None]


class Choice:
    """One choice's running state: what it has said so far and where its stream stands."""

    def __init__(self, index: int, prompt: int, parser: OutputParser | None) -> None:
        self.index, self.prompt, self.parser = index, prompt, parser
        self.first = True
        self.text = ""
        self.parsed = Parsed()
        self.entries: TokenEntries | None = None
        self.finish_reason: str | None = None
        self.text_offset = 0

    def add(self, text: str, entries: TokenEntries | None, finish_reason: str | None) -> Parsed:
        """Takes one delta's text; returns what the parser settled (chat) or the text (completions)."""
        self.text += text
        if entries is not None:
            self.entries = (self.entries or []) + entries
        if self.parser is None:
            parsed = Parsed(content=text)
        else:
            parsed = self.parser.feed(text)
            if finish_reason:
                parsed += self.parser.finish()
        self.parsed += parsed
        if finish_reason:
            # A turn that called tools and then stopped ends with "tool_calls", as OpenAI's does.
            self.finish_reason = "tool_calls" if self.parsed.tool_calls and finish_reason == "stop" else finish_reason
        return parsed


class Completions:
    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, top_logprobs: int | None, echo: list[str] | None = None) -> None:
        """echo: each prompt's text, put before its choices' text (and its logprobs before theirs)."""
        self.top_logprobs, self.echo = top_logprobs, echo

    def logprobs(self, choice: Choice, entries: TokenEntries | None, prompt: PromptEntries | None) -> dict | None:
        if entries is None and prompt is None:
            return None
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        if prompt is not None:
            self._prompt_logprobs(out, choice, prompt)
        for entry in entries or []:
            self._append(out, choice, next(iter(entry.values())), entry)
        return out

    def _prompt_logprobs(self, out: dict[str, Any], choice: Choice, prompt: PromptEntries) -> None:
        """The prompt's tokens; the first has no logprob, and its text is what the others leave."""
        rest = [e for e in prompt[1:] if e is not None]
        rest_text = "".join(next(iter(e.values()))["decoded_token"] for e in rest)
        echo = self.echo[choice.prompt] if self.echo else ""
        first = echo[: len(echo) - len(rest_text)] if echo.endswith(rest_text) else ""
        self._append(out, choice, {"decoded_token": first, "logprob": None}, {})
        for entry in rest:
            self._append(out, choice, next(iter(entry.values())), entry)

    def _append(self, out: dict[str, Any], choice: Choice, token: dict[str, Any], entry: dict) -> None:
        out["tokens"].append(token["decoded_token"])
        out["token_logprobs"].append(token["logprob"])
        out["top_logprobs"].append({v["decoded_token"]: v["logprob"] for v in _top(entry, self.top_logprobs)}
                                   if entry else None)
        out["text_offset"].append(choice.text_offset)
        choice.text_offset += len(token["decoded_token"])

    def chunk_choice(self, choice: Choice, delta: Delta, prompt: PromptEntries | None) -> dict[str, Any] | None:
        first, choice.first = choice.first, False
        choice.add(delta.text, delta.logprobs, delta.finish_reason)
        echo = self.echo[choice.prompt] if self.echo and first else ""
        prompt_lps = prompt if first and self.echo and self.top_logprobs is not None else None
        return {"index": choice.index, "text": echo + delta.text,
                "logprobs": self.logprobs(choice, delta.logprobs, prompt_lps), "finish_reason": choice.finish_reason}

    def final_choice(self, choice: Choice, prompt: PromptEntries | None) -> dict[str, Any]:
        echo = self.echo[choice.prompt] if self.echo else ""
        prompt_lps = prompt if self.echo and self.top_logprobs is not None else None
        choice.text_offset = 0
        body = {"index": choice.index, "text": echo + choice.text,
                "logprobs": self.logprobs(choice, choice.entries, prompt_lps), "finish_reason": choice.finish_reason}
        return {**body, "prompt_logprobs": prompt} if prompt is not None else body


class ChatCompletions:
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(self, top_logprobs: int | None, parser: Callable[[], OutputParser]) -> None:
        """parser: makes each choice's output parser (the family's, for this prompt and tools)."""
        self.top_logprobs, self.parser = top_logprobs, parser

    def logprobs(self, entries: TokenEntries | None) -> dict[str, Any] | None:
        if entries is None:
            return None
        content = []
        for entry in entries:
            sampled = next(iter(entry.values()))
            content.append({**_token(sampled), "top_logprobs": [_token(v) for v in _top(entry, self.top_logprobs)]})
        return {"content": content}

    def chunk_choice(self, choice: Choice, delta: Delta, prompt: PromptEntries | None) -> dict[str, Any] | None:
        """None when the delta settled nothing yet (e.g. it may be the start of a marker)."""
        first, calls_before = choice.first, len(choice.parsed.tool_calls)
        parsed = choice.add(delta.text, delta.logprobs, delta.finish_reason)
        message: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if parsed.content:
            message["content"] = parsed.content
        if parsed.reasoning:
            message["reasoning_content"] = parsed.reasoning
        if parsed.tool_calls:
            message["tool_calls"] = [c.as_openai(calls_before + i) for i, c in enumerate(parsed.tool_calls)]
        if not message and not choice.finish_reason and delta.logprobs is None:
            return None
        choice.first = False
        return {"index": choice.index, "delta": message, "logprobs": self.logprobs(delta.logprobs),
                "finish_reason": choice.finish_reason}

    def final_choice(self, choice: Choice, prompt: PromptEntries | None) -> dict[str, Any]:
        parsed = choice.parsed
        message: dict[str, Any] = {"role": "assistant", "content": parsed.content or None}
        if parsed.reasoning:
            message["reasoning_content"] = parsed.reasoning
        if parsed.tool_calls:
            message["tool_calls"] = [c.as_openai() for c in parsed.tool_calls]
        elif message["content"] is None:
            message["content"] = ""
        return {"index": choice.index, "message": message, "logprobs": self.logprobs(choice.entries),
                "finish_reason": choice.finish_reason}


def _token(v: dict[str, Any]) -> dict[str, Any]:
    token = v["decoded_token"]
    return {"token": token, "logprob": v["logprob"], "bytes": list(token.encode())}


def _top(entry: dict[str, dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """The n most likely tokens by rank (the sampled one may or may not be among them)."""
    ranked = sorted(entry.values(), key=lambda v: v["rank"])
    return ranked[: n or 0]


Format = Completions | ChatCompletions


class Responder:
    """One request's ids, choices and running totals; builds its chunks and its final body."""

    def __init__(self, fmt: Format, model: str, include_usage: bool, prompts: int = 1, n: int = 1) -> None:
        self.fmt, self.model, self.include_usage, self.n = fmt, model, include_usage, n
        self.id = f"{fmt.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        parser = fmt.parser if isinstance(fmt, ChatCompletions) else (lambda: None)
        self.choices = [Choice(p * n + s, p, parser()) for p in range(prompts) for s in range(n)]
        self.prompt_tokens = [0] * prompts
        self.cached_tokens = [0] * prompts
        self.prompt_logprobs: list[PromptEntries | None] = [None] * prompts
        self.completion_tokens = 0

    def _envelope(self, obj: str, choices: list[dict]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def chunk(self, prompt: int, delta: Delta) -> dict[str, Any] | None:
        """The stream chunk for one delta of prompt `prompt`; None when it has nothing to say."""
        choice = self._count(prompt, delta)
        body = self.fmt.chunk_choice(choice, delta, self.prompt_logprobs[prompt])
        if body is None:
            return None
        chunk = self._envelope(self.fmt.chunk_object, [body])
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._envelope(self.fmt.chunk_object, []), "usage": self._usage()}

    def response(self, deltas: list[tuple[int, Delta]]) -> dict[str, Any]:
        for prompt, delta in deltas:
            self._count(prompt, delta).add(delta.text, delta.logprobs, delta.finish_reason)
        choices = [self.fmt.final_choice(c, self.prompt_logprobs[c.prompt]) for c in self.choices]
        body = {**self._envelope(self.fmt.object, choices), "usage": self._usage()}
        if isinstance(self.fmt, ChatCompletions) and self.prompt_logprobs[0] is not None:
            body["prompt_logprobs"] = self.prompt_logprobs[0]  # vLLM's place for it in chat
        return body

    def _usage(self) -> dict[str, Any]:
        """OpenAI's usage object; cached_tokens are the prompt tokens the prefix cache held."""
        prompt = sum(self.prompt_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens)}}

    def _count(self, prompt: int, delta: Delta) -> Choice:
        self.prompt_tokens[prompt] = delta.num_prompt_tokens
        self.cached_tokens[prompt] = delta.num_cached_tokens
        self.completion_tokens += delta.num_tokens
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs[prompt] = delta.prompt_logprobs
        return self.choices[prompt * self.n + delta.index]

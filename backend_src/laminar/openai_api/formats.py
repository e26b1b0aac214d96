"""Model deltas -> OpenAI response bodies and stream chunks, for the two endpoints.

The two endpoints differ only in object names, where the text goes (`text` vs `message` /
`delta`) and the shape of `logprobs`; everything else (ids, usage, finish reasons) is shared.
The model's logprobs arrive as the vLLM backend's JSON: per token, a dict whose first entry is
the sampled token and whose other entries, by rank, its most likely alternatives.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from laminar.openai_api.triton_stream import Delta

TokenEntries = list[dict[str, dict[str, Any]]]


class Completions:
    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, top_logprobs: int | None) -> None:
        self.top_logprobs = top_logprobs
        self._offset = 0

    def logprobs(self, entries: TokenEntries | None) -> dict[str, Any] | None:
        if entries is None:
            return None
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in entries:
            sampled = next(iter(entry.values()))
            out["tokens"].append(sampled["decoded_token"])
            out["token_logprobs"].append(sampled["logprob"])
            out["top_logprobs"].append({v["decoded_token"]: v["logprob"] for v in _top(entry, self.top_logprobs)})
            out["text_offset"].append(self._offset)
            self._offset += len(sampled["decoded_token"])
        return out

    def choice(self, text: str, entries: TokenEntries | None, finish_reason: str | None, first: bool) -> dict:
        return {"index": 0, "text": text, "logprobs": self.logprobs(entries), "finish_reason": finish_reason}

    chunk_choice = choice


class ChatCompletions:
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def __init__(self, top_logprobs: int | None) -> None:
        self.top_logprobs = top_logprobs

    def logprobs(self, entries: TokenEntries | None) -> dict[str, Any] | None:
        if entries is None:
            return None
        content = []
        for entry in entries:
            sampled = next(iter(entry.values()))
            content.append({**_token(sampled), "top_logprobs": [_token(v) for v in _top(entry, self.top_logprobs)]})
        return {"content": content}

    def choice(self, text: str, entries: TokenEntries | None, finish_reason: str | None, first: bool) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": self.logprobs(entries), "finish_reason": finish_reason}

    def chunk_choice(self, text: str, entries: TokenEntries | None, finish_reason: str | None, first: bool) -> dict:
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": self.logprobs(entries), "finish_reason": finish_reason}


def _token(v: dict[str, Any]) -> dict[str, Any]:
    token = v["decoded_token"]
    return {"token": token, "logprob": v["logprob"], "bytes": list(token.encode())}


def _top(entry: dict[str, dict[str, Any]], n: int | None) -> list[dict[str, Any]]:
    """The n most likely tokens by rank (the sampled one may or may not be among them)."""
    ranked = sorted(entry.values(), key=lambda v: v["rank"])
    return ranked[: n or 0]


Format = Completions | ChatCompletions


class Responder:
    """One request's ids and running totals; builds its chunks and its final body."""

    def __init__(self, fmt: Format, model: str, include_usage: bool) -> None:
        self.fmt, self.model, self.include_usage = fmt, model, include_usage
        self.id = f"{fmt.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self._first = True

    def _envelope(self, obj: str, choices: list[dict]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def chunk(self, delta: Delta) -> dict[str, Any]:
        self._count(delta)
        choice = self.fmt.chunk_choice(delta.text, delta.logprobs, delta.finish_reason, self._first)
        self._first = False
        body = self._envelope(self.fmt.chunk_object, [choice])
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._envelope(self.fmt.chunk_object, []), "usage": self._usage()}

    def response(self, deltas: list[Delta]) -> dict[str, Any]:
        for delta in deltas:
            self._count(delta)
        entries = None if deltas[0].logprobs is None else [e for d in deltas for e in d.logprobs]
        text = "".join(d.text for d in deltas)
        body = self._envelope(self.fmt.object, [self.fmt.choice(text, entries, deltas[-1].finish_reason, True)])
        return {**body, "usage": self._usage()}

    def _usage(self) -> dict[str, Any]:
        """OpenAI's usage object; cached_tokens are the prompt tokens the prefix cache held."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    def _count(self, delta: Delta) -> None:
        self.prompt_tokens = delta.num_prompt_tokens
        self.cached_tokens = delta.num_cached_tokens
        self.completion_tokens += delta.num_tokens

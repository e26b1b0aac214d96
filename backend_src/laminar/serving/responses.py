"""Engine deltas -> Triton output arrays for one request.

Streaming: one response per engine step that produced tokens, holding only the new text and ids;
the last one carries the finish reason. Non-streaming: a single response at the end with all the
text (prefixed by the prompt text unless exclude_input_in_output, as in the vLLM backend) and ids.
`finish_reason` is "" on every response but the last, so clients can spot the end without
relying on Triton's final-response flag.

With return_logprobs, `logprobs` holds the vLLM backend's JSON: one object per token of the
response, {token id: {"logprob", "rank", "decoded_token"}}, the sampled token first and then its
most likely alternatives; -inf (a token filtered out by top-k/top-p) is sent as -9999.0, as vLLM's
OpenAI server does, since JSON has no infinity.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from laminar.serving.request_parsing import ParsedRequest

if TYPE_CHECKING:
    from laminar import RequestOutput
    from laminar.outputs import TokenLogprobs

Arrays = dict[str, np.ndarray]


_MIN_LOGPROB = -9999.0


def _bytes(text: str) -> np.ndarray:
    return np.array([text.encode("utf-8")], dtype=np.object_)


def logprobs_json(entries: list[TokenLogprobs], decode: Callable[[list[int]], str]) -> str:
    """The vLLM backend's per-token logprobs dicts, as JSON."""
    def entry(token_id: int, logprob: float, rank: int) -> dict:
        return {"logprob": max(logprob, _MIN_LOGPROB), "rank": rank, "decoded_token": decode([token_id])}

    tokens = []
    for lp in entries:
        d = {str(lp.token_id): entry(lp.token_id, lp.logprob, lp.rank)}
        for rank, (token_id, logprob) in enumerate(lp.top, start=1):
            d.setdefault(str(token_id), entry(token_id, logprob, rank))
        tokens.append(d)
    return json.dumps(tokens)


class ResponseBuilder:
    """Per-request state between engine steps (accumulation for non-streaming requests)."""

    def __init__(self, request: ParsedRequest, decode: Callable[[list[int]], str]) -> None:
        self._request = request
        self._decode = decode
        self._ids: list[int] = []
        self._text: list[str] = []
        self._logprobs: list[TokenLogprobs] = []

    def feed(self, out: RequestOutput) -> Arrays | None:
        """Arrays to send now, or None when nothing is due (non-streaming, or an empty delta)."""
        if self._request.stream:
            if not out.new_token_ids and not out.new_text and not out.finished:
                return None
            return self._arrays(out.new_token_ids, out.new_text, out, out.logprobs or [])
        self._ids.extend(out.new_token_ids)
        self._text.append(out.new_text)
        self._logprobs.extend(out.logprobs or [])
        if not out.finished:
            return None
        text = "".join(self._text)
        if not self._request.exclude_input_in_output:
            text = self._prompt_text() + text
        return self._arrays(self._ids, text, out, self._logprobs)

    def _prompt_text(self) -> str:
        prompt = self._request.prompt
        return prompt if isinstance(prompt, str) else self._decode(prompt)

    def _arrays(self, ids: list[int], text: str, out: RequestOutput, logprobs: list[TokenLogprobs]) -> Arrays:
        """num_output_tokens counts this response's tokens (the whole output when not streaming)."""
        arrays = {
            "text_output": _bytes(text),
            "output_ids": np.array(ids, dtype=np.int32),
            "finish_reason": _bytes(out.finish_reason if out.finished and out.finish_reason else ""),
        }
        if self._request.return_num_input_tokens:
            arrays["num_input_tokens"] = np.array([out.num_prompt_tokens], dtype=np.uint32)
        if self._request.return_num_output_tokens:
            arrays["num_output_tokens"] = np.array([len(ids)], dtype=np.uint32)
        if self._request.return_num_cached_tokens:
            arrays["num_cached_tokens"] = np.array([out.num_cached_tokens], dtype=np.uint32)
        if self._request.return_logprobs:
            arrays["logprobs"] = _bytes(logprobs_json(logprobs, self._decode))
        return arrays

"""Engine deltas -> Triton output arrays for one request.

Streaming: one response per engine step that produced tokens, holding only the new text and ids;
the last one carries the finish reason. Non-streaming: a single response at the end with all the
text (prefixed by the prompt text unless exclude_input_in_output, as in the vLLM backend) and ids.
`finish_reason` is "" on every response but the last, so clients can spot the end without
relying on Triton's final-response flag.

Every response carries `sequence_index` (TensorRT-LLM's name): which of the request's n samples
it belongs to. Samples stream independently; non-streaming, each sample gets one response when it
ends, with its finish reason, and the request's final flag comes with the last of them.

With prompt_logprobs, the request's first response carries `prompt_logprobs`: the same per-token
JSON for every prompt token (null for the first, which has none).

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


def logprobs_json(entries: list[TokenLogprobs | None], decode: Callable[[list[int]], str]) -> str:
    """The vLLM backend's per-token logprobs dicts, as JSON (None -> null)."""
    def entry(token_id: int, logprob: float, rank: int) -> dict:
        return {"logprob": max(logprob, _MIN_LOGPROB), "rank": rank, "decoded_token": decode([token_id])}

    tokens = []
    for lp in entries:
        if lp is None:
            tokens.append(None)
            continue
        d = {str(lp.token_id): entry(lp.token_id, lp.logprob, lp.rank)}
        for rank, (token_id, logprob) in enumerate(lp.top, start=1):
            d.setdefault(str(token_id), entry(token_id, logprob, rank))
        tokens.append(d)
    return json.dumps(tokens)


class _Sample:
    """One sample's accumulation (non-streaming)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.text: list[str] = []
        self.logprobs: list[TokenLogprobs] = []


class ResponseBuilder:
    """Per-request state between engine steps (accumulation for non-streaming requests)."""

    def __init__(self, request: ParsedRequest, decode: Callable[[list[int]], str]) -> None:
        self._request = request
        self._decode = decode
        self._samples: dict[int, _Sample] = {}
        self._prompt_logprobs: list[TokenLogprobs | None] | None = None  # until a response carries them

    def feed(self, out: RequestOutput) -> Arrays | None:
        """Arrays to send now, or None when nothing is due (non-streaming, or an empty delta)."""
        if out.prompt_logprobs is not None:
            self._prompt_logprobs = out.prompt_logprobs
        sample_done = out.finish_reason is not None
        if self._request.stream:
            if not out.new_token_ids and not out.new_text and not sample_done:
                return None
            return self._arrays(out.new_token_ids, out.new_text, out, out.logprobs or [])
        sample = self._samples.setdefault(out.index, _Sample())
        sample.ids.extend(out.new_token_ids)
        sample.text.append(out.new_text)
        sample.logprobs.extend(out.logprobs or [])
        if not sample_done:
            return None
        del self._samples[out.index]
        text = "".join(sample.text)
        if not self._request.exclude_input_in_output:
            text = self._prompt_text() + text
        return self._arrays(sample.ids, text, out, sample.logprobs)

    def _prompt_text(self) -> str:
        prompt = self._request.prompt
        return prompt if isinstance(prompt, str) else self._decode(prompt)

    def _arrays(self, ids: list[int], text: str, out: RequestOutput, logprobs: list[TokenLogprobs]) -> Arrays:
        """num_output_tokens counts this response's tokens (the whole output when not streaming)."""
        arrays = {
            "text_output": _bytes(text),
            "output_ids": np.array(ids, dtype=np.int32),
            "finish_reason": _bytes(out.finish_reason or ""),
            "sequence_index": np.array([out.index], dtype=np.uint32),
        }
        if self._prompt_logprobs is not None:
            arrays["prompt_logprobs"] = _bytes(logprobs_json(self._prompt_logprobs, self._decode))
            self._prompt_logprobs = None
        if self._request.return_num_input_tokens:
            arrays["num_input_tokens"] = np.array([out.num_prompt_tokens], dtype=np.uint32)
        if self._request.return_num_output_tokens:
            arrays["num_output_tokens"] = np.array([len(ids)], dtype=np.uint32)
        if self._request.return_num_cached_tokens:
            arrays["num_cached_tokens"] = np.array([out.num_cached_tokens], dtype=np.uint32)
        if self._request.return_logprobs:
            arrays["logprobs"] = _bytes(logprobs_json(logprobs, self._decode))
        return arrays

"""Engine deltas -> Triton output arrays for one request.

Streaming: one response per engine step that produced tokens, holding only the new text and ids;
the last one carries the finish reason. Non-streaming: a single response at the end with all the
text (prefixed by the prompt text unless exclude_input_in_output, as in the vLLM backend) and ids.
`finish_reason` is "" on every response but the last, so clients can spot the end without
relying on Triton's final-response flag.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from laminar.serving.request_parsing import ParsedRequest

if TYPE_CHECKING:
    from laminar import RequestOutput

Arrays = dict[str, np.ndarray]


def _bytes(text: str) -> np.ndarray:
    return np.array([text.encode("utf-8")], dtype=np.object_)


class ResponseBuilder:
    """Per-request state between engine steps (accumulation for non-streaming requests)."""

    def __init__(self, request: ParsedRequest, decode: Callable[[list[int]], str]) -> None:
        self._request = request
        self._decode = decode
        self._ids: list[int] = []
        self._text: list[str] = []

    def feed(self, out: RequestOutput) -> Arrays | None:
        """Arrays to send now, or None when nothing is due (non-streaming, or an empty delta)."""
        if self._request.stream:
            if not out.new_token_ids and not out.new_text and not out.finished:
                return None
            return self._arrays(out.new_token_ids, out.new_text, out)
        self._ids.extend(out.new_token_ids)
        self._text.append(out.new_text)
        if not out.finished:
            return None
        text = "".join(self._text)
        if not self._request.exclude_input_in_output:
            text = self._prompt_text() + text
        return self._arrays(self._ids, text, out)

    def _prompt_text(self) -> str:
        prompt = self._request.prompt
        return prompt if isinstance(prompt, str) else self._decode(prompt)

    def _arrays(self, ids: list[int], text: str, out: RequestOutput) -> Arrays:
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
        return arrays

"""Prompt -> token ids on Triton's execute thread, bounded before it can cost anything.

The engine loop thread must never tokenize: a tokenizer call holds the GIL, so a 5 MB prompt
stalled every running stream for seconds. Text is turned into ids here instead, after a byte
bound that needs no tokenizer: no token covers more bytes than the longest token in the
vocabulary, so a prompt of more than max_model_len * that many bytes cannot fit and is refused
at once. What passes is tokenized with the GIL released (Tokenizer.encode).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from laminar.serving.request_parsing import RequestError
from laminar.tokenizer import Tokenizer


class PromptLimits:
    def __init__(self, tokenizer: Tokenizer | None, max_model_len: int) -> None:
        self._tokenizer = tokenizer
        self._max_model_len = max_model_len
        self.max_bytes = max_model_len * tokenizer.max_token_bytes() if tokenizer else 0

    def check_sizes(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Refuses prompts too big to fit from the raw tensors' sizes, before any parsing."""
        ids = inputs.get("input_ids")
        if ids is not None and ids.size >= self._max_model_len:
            raise RequestError(f"input 'input_ids' has {ids.size} tokens, but max_model_len is "
                               f"{self._max_model_len} (at least one token must be generated)")
        text = inputs.get("text_input")
        if text is not None and text.dtype.kind == "O" and self._tokenizer is not None:
            size = sum(len(v) for v in text.reshape(-1) if isinstance(v, bytes))
            if size > self.max_bytes:
                raise self._too_many_bytes(size)

    def token_ids(self, prompt: str | list[int]) -> list[int]:
        """The prompt as ids, or RequestError when it cannot fit; the engine re-checks ids."""
        if isinstance(prompt, str):
            prompt = self._encode(prompt)
        if len(prompt) >= self._max_model_len:
            raise RequestError(
                f"prompt has {len(prompt)} tokens, but max_model_len is {self._max_model_len} "
                "(at least one token must be generated)")
        return prompt

    def _encode(self, text: str) -> list[int]:
        if self._tokenizer is None:
            raise RequestError("input 'text_input': this model has no tokenizer.json; send 'input_ids'")
        size = len(text.encode("utf-8"))
        if size > self.max_bytes:
            raise self._too_many_bytes(size)
        return self._tokenizer.encode(text)

    def _too_many_bytes(self, size: int) -> RequestError:
        return RequestError(f"input 'text_input' is {size} bytes; prompts over {self.max_bytes} bytes "
                            f"cannot fit max_model_len {self._max_model_len} tokens")

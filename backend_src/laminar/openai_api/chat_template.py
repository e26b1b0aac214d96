"""Chat messages -> one prompt string, with the checkpoint's own chat template.

transformers renders it, so templates behave exactly as in the checkpoint's reference
(tokenizer_config.json's `chat_template` or a chat_template.jinja file).
"""
from __future__ import annotations

from typing import Any

from transformers import AutoTokenizer


class ChatTemplate:
    def __init__(self, checkpoint: str) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    @property
    def available(self) -> bool:
        return bool(getattr(self._tokenizer, "chat_template", None))

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               kwargs: dict[str, Any] | None = None) -> str:
        """kwargs: the template's own switches (chat_template_kwargs, e.g. enable_thinking)."""
        return self._tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                   add_generation_prompt=True, **(kwargs or {}))

    def decode(self, ids: list[int]) -> str:
        """A token-id prompt's text, for completions' echo."""
        return self._tokenizer.decode(ids)

"""Tokenizer wrapper over `tokenizers` (no transformers, no network) and streaming detokenizer."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

# How many prompt tokens before the first output token are decoded with it, so that
# tokenizers which strip or merge leading spaces decode the first output token right.
_PROMPT_CONTEXT_TOKENS = 5
# Pending tokens that never end a character are invalid UTF-8; past this many they are
# released (as U+FFFD) so the decode window stays small.
_MAX_PENDING_TOKENS = 8
_REPLACEMENT = "\ufffd"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _as_id_set(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else {int(v) for v in value}


class Tokenizer:
    """A model directory's `tokenizer.json`, plus the EOS ids the engine stops on."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self._tok = _HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        gen_config = _read_json(model_dir / "generation_config.json")
        config = _read_json(model_dir / "config.json")
        self.eos_token_ids: set[int] = _as_id_set(gen_config.get("eos_token_id")) | _as_id_set(
            config.get("eos_token_id")
        )
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Special tokens are added only if the tokenizer's own post-processor adds them;
        special-token text such as `<|im_start|>` in `text` maps to its id. `encode_batch`
        releases the GIL while it works (`encode` does not), so other threads keep running."""
        return self._tok.encode_batch([text])[0].ids

    def max_token_bytes(self) -> int:
        """Upper bound on the text bytes one token stands for (UTF-8 of its vocabulary string:
        byte-level and SentencePiece markers only take more bytes than the text they encode)."""
        return max(len(token.encode("utf-8")) for token in self._tok.get_vocab(with_added_tokens=True))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    return Tokenizer(model_dir)


class IncrementalDetokenizer:
    """Turns a request's output tokens into streamable text, one step at a time.

    Like vLLM, it keeps two offsets into the token list: text up to `read_offset` has been
    produced, and decoding restarts at `prefix_offset` so the window carries enough context.
    Each step decodes only that window, so the cost is O(new tokens), and text is released
    only when it does not end in U+FFFD (a byte-level token may end mid-character).

    Stop strings are searched in the output text only; the last (longest stop - 1)
    characters are held back while streaming so a stop string split across steps is never
    emitted. `text` is the output so far, truncated before a stop string once one is hit.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_token_ids: list[int],
        stop: list[str] | None = None,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = list(stop or [])
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def step(self, new_token_ids: list[int]) -> tuple[str, bool]:
        """Adds tokens; returns (text safe to emit now, whether a stop string was hit)."""
        if self.stopped:
            return "", True
        self._ids.extend(new_token_ids)
        self._append(self._decode_pending(force=False))
        if self.stopped:
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self._holdback), False

    def finish(self) -> str:
        """Flushes held-back text when the request ends for a reason other than a stop string."""
        if self.stopped:
            return ""
        self._append(self._decode_pending(force=True))
        return self._take(len(self.text))

    def _decode_pending(self, force: bool) -> str:
        """New text from the window, up to the last pending token that ends a character.

        An unfinished character has at most 3 of its bytes so far, so it spans at most the
        last 3 tokens; cutting those off finds the longest releasable prefix. If no cut helps
        the bytes are invalid UTF-8, released as U+FFFD once too many tokens are pending.
        """
        pending = len(self._ids) - self._read_offset
        if pending == 0:
            return ""
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], self._skip_special)
        end = len(self._ids)
        if not force:
            for cut in range(min(3, pending - 1) + 1):
                text = decode(self._ids[self._prefix_offset : end - cut], self._skip_special)
                if not text.endswith(_REPLACEMENT):
                    end -= cut
                    break
            else:
                if pending < _MAX_PENDING_TOKENS:
                    return ""
                end -= 3
                text = decode(self._ids[self._prefix_offset : end], self._skip_special)
        else:
            text = decode(self._ids[self._prefix_offset :], self._skip_special)
        self._prefix_offset = self._read_offset
        self._read_offset = end
        # Skipped special tokens can leave the text unchanged; the offsets still move.
        return text[len(prefix_text) :] if len(text) > len(prefix_text) else ""

    def _append(self, new_text: str) -> None:
        """Appends decoded text and truncates it before the earliest stop string, if any."""
        if not new_text:
            return
        old_len = len(self.text)
        self.text += new_text
        hits = []
        for s in self._stop:
            pos = self.text.find(s, max(0, old_len - len(s) + 1))
            if pos >= 0:
                hits.append(pos)
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _take(self, upto: int) -> str:
        """Returns text between the emitted mark and `upto`, moving the mark forward."""
        if upto <= self._emitted:
            return ""
        out = self.text[self._emitted : upto]
        self._emitted = upto
        return out

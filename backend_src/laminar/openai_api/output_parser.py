"""The model's text -> reasoning, content and tool calls, per model family, incrementally.

A parser is fed the detokenized text as it streams and returns what became certain: text that
may still be the start of a marker (`<tool_call>`, `</think>`, `<|end|>`) is held back until
the next piece settles it. Tool calls are emitted whole, once their closing marker arrives,
so every streamed call carries arguments that parse.

Families (laminar.openai_api.families picks one from the checkpoint's config.json):
- Qwen3: `<think>...</think>` then content; tool calls as `<tool_call>{"name", "arguments"}</tool_call>`.
- GPT-OSS harmony: messages `<|channel|>NAME[ to=functions.F][<|constrain|>json]<|message|>BODY<|end|>`;
  analysis -> reasoning, final (and commentary without a recipient) -> content, commentary to
  functions.F -> a tool call. The text carries the special tokens because the request asks the
  engine not to skip them; the markers are those tokens' strings (openai-harmony would need its
  encoding files downloaded, so it is not used).
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def as_openai(self, index: int | None = None) -> dict[str, Any]:
        call = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


@dataclass
class Parsed:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __iadd__(self, other: Parsed) -> Parsed:
        self.reasoning += other.reasoning
        self.content += other.content
        self.tool_calls += other.tool_calls
        return self


def _split_marker(text: str, marker: str) -> tuple[str, str]:
    """(safe, held): `held` is the longest end of `text` that could begin `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return text[:-n], text[-n:]
    return text, ""


def _tool_call(payload: str) -> ToolCall | None:
    """A Qwen3 tool-call body `{"name": ..., "arguments": {...}}`, or None if it is not one."""
    try:
        call = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    return ToolCall(call["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))


class PlainParser:
    """Everything is content (a family we do not know, or a request that parses nothing)."""

    def feed(self, text: str) -> Parsed:
        return Parsed(content=text)

    def finish(self) -> Parsed:
        return Parsed()


class Qwen3Parser:
    THINK, END_THINK, CALL, END_CALL = "<think>", "</think>", "<tool_call>", "</tool_call>"

    def __init__(self, in_reasoning: bool, tools: bool) -> None:
        """in_reasoning: the prompt already opened `<think>`; tools: parse `<tool_call>` blocks."""
        self._mode = "reasoning" if in_reasoning else "start"
        self._tools = tools
        self._buf = ""
        self._trim = False  # drop the newlines that follow `</think>` or `</tool_call>`

    def feed(self, text: str) -> Parsed:
        self._buf += text
        out = Parsed()
        while True:
            step = getattr(self, f"_{self._mode}")()
            if step is None:
                return out
            out += step

    def finish(self) -> Parsed:
        """The rest when the model stops: an unclosed think block is reasoning, an unclosed or
        invalid tool call is content."""
        rest, self._buf = self._buf, ""
        if self._mode == "reasoning":
            return Parsed(reasoning=rest)
        if self._mode == "call":
            return Parsed(content=self.CALL + rest)
        return Parsed(content=rest)

    def _start(self) -> Parsed | None:
        stripped = self._buf.lstrip()
        if stripped.startswith(self.THINK):
            self._buf, self._mode = stripped[len(self.THINK):], "reasoning"
        elif stripped and not self.THINK.startswith(stripped):
            self._mode = "content"
        else:
            return None  # still possibly `<think>`
        return Parsed()

    def _reasoning(self) -> Parsed | None:
        head, sep, tail = self._buf.partition(self.END_THINK)
        if sep:
            self._buf, self._mode, self._trim = tail, "content", True
            return Parsed(reasoning=head)
        safe, self._buf = _split_marker(self._buf, self.END_THINK)
        return Parsed(reasoning=safe) if safe else None

    def _content(self) -> Parsed | None:
        if self._trim:
            self._buf = self._buf.lstrip("\n")
            if not self._buf:
                return None
            self._trim = False
        if not self._tools:
            text, self._buf = self._buf, ""
            return Parsed(content=text) if text else None
        head, sep, tail = self._buf.partition(self.CALL)
        if sep:
            self._buf, self._mode = tail, "call"
            return Parsed(content=head)
        safe, self._buf = _split_marker(self._buf, self.CALL)
        return Parsed(content=safe) if safe else None

    def _call(self) -> Parsed | None:
        head, sep, tail = self._buf.partition(self.END_CALL)
        if not sep:
            return None
        self._buf, self._mode, self._trim = tail, "content", True
        call = _tool_call(head.strip())
        return Parsed(tool_calls=[call]) if call else Parsed(content=self.CALL + head + sep)


# Harmony's special tokens that end a message (<|return|> and <|call|> are also stop tokens).
_HARMONY_ENDS = ("<|end|>", "<|return|>", "<|call|>", "<|start|>")
_RECIPIENT = re.compile(r"to=functions\.([^\s<]+)")


class HarmonyParser:
    """GPT-OSS's harmony messages; the prompt ends with `<|start|>assistant`."""

    def __init__(self, tools: bool) -> None:
        self._tools = tools
        self._buf = ""
        self._header: str | None = None  # the current message's header, once complete
        self._args = ""

    def feed(self, text: str) -> Parsed:
        self._buf += text
        out = Parsed()
        while (step := self._step()) is not None:
            out += step
        return out

    def finish(self) -> Parsed:
        rest, self._buf = self._buf, ""
        if self._header is None:
            return Parsed()
        return self._end_message(rest)

    def _step(self) -> Parsed | None:
        if self._header is None:
            head, sep, tail = self._buf.partition("<|message|>")
            if not sep:
                return None
            self._header, self._buf, self._args = head, tail, ""
            return Parsed()
        cut = min((i for i in (self._buf.find(m) for m in _HARMONY_ENDS) if i >= 0), default=-1)
        if cut >= 0:
            body, self._buf = self._buf[:cut], self._buf[cut:]
            for marker in _HARMONY_ENDS[:3]:
                self._buf = self._buf.removeprefix(marker)
            return self._end_message(body)
        safe, held = self._buf, ""
        for marker in _HARMONY_ENDS:
            candidate, rest = _split_marker(self._buf, marker)
            if len(rest) > len(held):
                safe, held = candidate, rest
        self._buf = held
        return self._body(safe) if safe else None

    def _recipient(self) -> str | None:
        match = _RECIPIENT.search(self._header or "")
        return match.group(1) if match and self._tools else None

    def _body(self, text: str) -> Parsed:
        if self._recipient():
            self._args += text
            return Parsed()
        if "<|channel|>analysis" in (self._header or ""):
            return Parsed(reasoning=text)
        return Parsed(content=text)

    def _end_message(self, body: str) -> Parsed:
        out = self._body(body)
        name = self._recipient()
        self._header = None
        if name:
            out.tool_calls.append(ToolCall(name, self._args.strip()))
        return out


OutputParser = PlainParser | Qwen3Parser | HarmonyParser

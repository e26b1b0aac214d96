"""Model families: how a checkpoint writes reasoning and tool calls, read off its config.json.

Each family knows its output parser (laminar.openai_api.output_parser) and the xgrammar
structural tag that forces one call of a named function in its syntax, with arguments valid
for the function's parameters schema: `tool_choice` "required" and named calls are made
certain by that grammar rather than hoped for.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from laminar.openai_api.output_parser import HarmonyParser, OutputParser, PlainParser, Qwen3Parser

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


class Qwen3Family:
    """Qwen2.5/Qwen3 (and the demo checkpoint): `<think>` blocks and `<tool_call>` JSON."""

    name = "qwen3"
    sampling: dict[str, Any] = {}
    call_separator = "\n"

    def parser(self, prompt: str, tools: bool) -> OutputParser:
        return Qwen3Parser(in_reasoning=prompt.rstrip().endswith("<think>"), tools=tools)

    def tool_tag(self, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return {"type": "tag", "begin": f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": ',
                "content": {"type": "json_schema", "json_schema": parameters}, "end": "}\n</tool_call>"}


class HarmonyFamily:
    """GPT-OSS: harmony channels; the special tokens stay in the text so they can be parsed."""

    name = "harmony"
    sampling: dict[str, Any] = {"skip_special_tokens": False}
    call_separator = "<|start|>assistant"

    def parser(self, prompt: str, tools: bool) -> OutputParser:
        return HarmonyParser(tools=tools)

    def tool_tag(self, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return {"type": "tag", "begin": f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>",
                "content": {"type": "json_schema", "json_schema": parameters}, "end": "<|call|>"}


class PlainFamily:
    """A family we do not know: all text is content, and tool calls cannot be read."""

    name = "plain"
    sampling: dict[str, Any] = {}
    call_separator = ""

    def parser(self, prompt: str, tools: bool) -> OutputParser:
        return PlainParser()

    def tool_tag(self, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


Family = Qwen3Family | HarmonyFamily | PlainFamily
_BY_MODEL_TYPE = {"gpt_oss": HarmonyFamily, "qwen3": Qwen3Family, "qwen3_moe": Qwen3Family,
                  "qwen2": Qwen3Family, "qwen2_moe": Qwen3Family}


def family_of(checkpoint: str | None) -> Family:
    config = Path(checkpoint or "") / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return _BY_MODEL_TYPE.get(model_type, PlainFamily)()


def forced_tool_calls(family: Family, tools: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """structured_outputs for tool_choice "required": one or more calls (one when not parallel)
    of the given functions, and nothing else."""
    tags = [family.tool_tag(t["name"], t.get("parameters") or EMPTY_PARAMETERS) for t in tools]
    return {"structural_tag": {"type": "structural_tag", "format": {
        "type": "tags_with_separator", "tags": tags, "separator": family.call_separator,
        "at_least_one": True, "stop_after_first": not parallel}}}


def named_tool_call(family: Family, tool: dict[str, Any]) -> dict[str, Any]:
    """structured_outputs for a named tool_choice: exactly one call of that function."""
    tag = family.tool_tag(tool["name"], tool.get("parameters") or EMPTY_PARAMETERS)
    return {"structural_tag": {"type": "structural_tag", "format": tag}}

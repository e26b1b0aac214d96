"""Engine arguments from a Triton model config's `parameters`, overridable by environment.

Triton passes every parameter as a string; this module types them after the EngineArgs field
they name, so a typo'd or ill-typed parameter fails model load with a message naming it.
`LAMINAR_<NAME>` environment variables override the parameter `<name>` (e.g. LAMINAR_MODEL,
LAMINAR_DEVICE), so one repository serves the demo model on CPU and a real checkpoint on GPU.
Empty values mean "use the engine default".
"""
from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "LAMINAR_"
_NONE_WORDS = {"none", "null"}
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert_one(raw: str, hint: Any) -> Any:
    """Raw string -> the type `hint` names; raises ValueError/TypeError when it does not fit."""
    if hint is bool:
        return _BOOL_WORDS[raw.lower()]
    if hint in (int, float, str):
        return hint(raw)
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        value = json.loads(raw)
        if not isinstance(value, list):
            raise ValueError("expected a JSON list")
        return origin(value)
    raise TypeError(f"unsupported field type {hint!r}")


def convert_value(name: str, raw: str, hint: Any) -> Any:
    """Types one parameter; the error names the parameter and what it expected."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if type(None) in members and raw.strip().lower() in _NONE_WORDS:
        return None
    for member in (m for m in members if m is not type(None)):
        try:
            return _convert_one(raw.strip(), member)
        except (ValueError, TypeError, KeyError):
            continue
    raise ValueError(f"parameter {name!r}: cannot read {raw!r} as {hint}")


def merge_parameters(
    params: Mapping[str, str], env: Mapping[str, str], names: typing.Iterable[str]
) -> dict[str, str]:
    """Config parameters with `LAMINAR_<NAME>` overrides (for engine fields only, so unrelated
    LAMINAR_* variables cannot break model load) applied, and empty values dropped."""
    merged = dict(params)
    for name in names:
        if ENV_PREFIX + name.upper() in env:
            merged[name] = env[ENV_PREFIX + name.upper()]
    return {k: v for k, v in merged.items() if v.strip() != ""}


def resolve_engine_config(
    params: Mapping[str, str], field_types: Mapping[str, Any], base_dir: str, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Typed engine-argument dict; unknown names pass through untyped so EngineArgs rejects them.

    A relative `model` path is taken relative to `base_dir` (the model's directory in the model
    repository), so the shipped config finds the demo checkpoint wherever the repository lives.
    """
    merged = merge_parameters(params, os.environ if env is None else env, field_types)
    typed = {k: convert_value(k, v, field_types[k]) if k in field_types else v for k, v in merged.items()}
    model = typed.get("model")
    if isinstance(model, str) and not os.path.isabs(model):
        typed["model"] = os.path.abspath(os.path.join(base_dir, model))
    return typed


def engine_field_types(args_cls: type) -> dict[str, Any]:
    """Resolved annotations of the EngineArgs dataclass (they are strings under `from __future__`)."""
    return typing.get_type_hints(args_cls)

"""Triton request tensors -> one engine request, with an error naming the problem otherwise.

Works on plain `{input name: numpy array}` dicts so it is testable without Triton. Accepts the
vLLM-backend convention (text_input, stream, sampling_parameters JSON, exclude_input_in_output,
return_num_*_tokens, return_logprobs), the TensorRT-LLM-backend per-field tensors (max_tokens,
temperature, top_k, top_p, random_seed / seed, frequency_penalty, presence_penalty, stop_words,
end_id, ...) and token-level prompts (input_ids). Scalars may be [1] or [1, 1] arrays here; Triton
itself holds requests to config.pbtxt's dims ([1]) before they reach the model.

sampling_parameters follows vLLM's JSON: numbers may be numeric strings (genai-perf sends
`"max_tokens": "256"`). It also carries n (TensorRT-LLM's tensor: num_return_sequences),
logit_bias, prompt_logprobs and structured_outputs (laminar.sampling_params checks their shape;
a schema, regex or grammar is checked when it compiles, in the engine), and the admission fields
priority and ttft_slo_ms.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from laminar.sampling_params import SamplingParams


class RequestError(ValueError):
    """A client mistake; its message is sent back as the request's error response."""


@dataclass(frozen=True)
class ParsedRequest:
    prompt: str | list[int]
    params: SamplingParams
    stream: bool = False
    exclude_input_in_output: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    return_num_cached_tokens: bool = False
    return_logprobs: bool = False


_INT_KINDS = "iu"
_FLOAT_KINDS = "iuf"


def _scalar(name: str, array: np.ndarray, kinds: str) -> Any:
    if array.dtype.kind not in kinds:
        raise RequestError(f"input {name!r} has dtype {array.dtype}, expected one of kinds {kinds!r}")
    if array.size != 1:
        raise RequestError(f"input {name!r} must hold exactly one value, got shape {list(array.shape)}")
    return array.reshape(-1).tolist()[0]


def _as_int(name: str, array: np.ndarray) -> int:
    return int(_scalar(name, array, _INT_KINDS))


def _as_token_id(name: str, array: np.ndarray) -> int:
    value = _as_int(name, array)
    if value < 0:
        raise RequestError(f"input {name!r} must be a token id >= 0, got {value}")
    return value


def _check_json_seed(seed: Any) -> None:
    """A JSON seed must fit UINT64, the random_seed tensor's type; a larger one cannot seed a
    generator (and used to fail as "Overflow when unpacking long long")."""
    if isinstance(seed, int) and not 0 <= seed < 2**64:
        raise RequestError(f"sampling parameter 'seed' must be in [0, 2**64), got {seed}")


def _as_float(name: str, array: np.ndarray) -> float:
    return float(_scalar(name, array, _FLOAT_KINDS))


def _as_bool(name: str, array: np.ndarray) -> bool:
    return bool(_scalar(name, array, "b"))


def _decode(name: str, value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"input {name!r} is not valid UTF-8: {e}") from None
    return str(value)


def _as_text(name: str, array: np.ndarray) -> str:
    return _decode(name, _scalar(name, array, "OSU"))


def _as_text_list(name: str, array: np.ndarray) -> list[str]:
    if array.dtype.kind not in "OSU":
        raise RequestError(f"input {name!r} has dtype {array.dtype}, expected BYTES")
    return [_decode(name, v) for v in array.reshape(-1).tolist()]


# Per-field tensors: input name -> (SamplingParams field, reader).
_FIELD_TENSORS: dict[str, tuple[str, Callable[[str, np.ndarray], Any]]] = {
    "max_tokens": ("max_tokens", _as_int),
    "temperature": ("temperature", _as_float),
    "top_k": ("top_k", _as_int),
    "top_p": ("top_p", _as_float),
    "min_p": ("min_p", _as_float),
    "random_seed": ("seed", _as_int),
    "seed": ("seed", _as_int),
    "frequency_penalty": ("frequency_penalty", _as_float),
    "presence_penalty": ("presence_penalty", _as_float),
    "repetition_penalty": ("repetition_penalty", _as_float),
    "ignore_eos": ("ignore_eos", _as_bool),
    "stop_words": ("stop", _as_text_list),
    "end_id": ("stop_token_ids", lambda n, a: [_as_token_id(n, a)]),
    "num_return_sequences": ("n", _as_int),
}
_FLAGS = ("stream", "exclude_input_in_output", "return_num_input_tokens", "return_num_output_tokens",
          "return_num_cached_tokens", "return_logprobs")
_PROMPTS = ("text_input", "input_ids")
KNOWN_INPUTS = frozenset(_FIELD_TENSORS) | set(_FLAGS) | set(_PROMPTS) | {"sampling_parameters"}


def _prompt(inputs: Mapping[str, np.ndarray]) -> str | list[int]:
    given = [name for name in _PROMPTS if name in inputs]
    if len(given) != 1:
        raise RequestError(
            "exactly one of 'text_input' or 'input_ids' is required, got "
            + (" and ".join(repr(n) for n in given) or "neither")
        )
    if given[0] == "text_input":
        return _as_text("text_input", inputs["text_input"])
    ids = inputs["input_ids"]
    if ids.dtype.kind not in _INT_KINDS:
        raise RequestError(f"input 'input_ids' has dtype {ids.dtype}, expected INT32")
    if ids.ndim > 2 or (ids.ndim == 2 and ids.shape[0] != 1):
        raise RequestError(f"input 'input_ids' must be one sequence, got shape {list(ids.shape)}")
    return [int(t) for t in ids.reshape(-1)]


def _sampling_dict(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """JSON sampling_parameters merged with per-field tensors; a field set both ways is an error."""
    fields: dict[str, Any] = {}
    if "sampling_parameters" in inputs:
        raw = _as_text("sampling_parameters", inputs["sampling_parameters"])
        try:
            fields = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as e:
            raise RequestError(f"input 'sampling_parameters' is not valid JSON: {e}") from None
        except RecursionError:
            raise RequestError("input 'sampling_parameters' is nested too deeply") from None
        if not isinstance(fields, dict):
            raise RequestError("input 'sampling_parameters' must be a JSON object")
        fields = _vllm_json_fields(fields)
        _check_json_seed(fields.get("seed"))
    for name, (field, read) in _FIELD_TENSORS.items():
        if name not in inputs:
            continue
        if field in fields:
            raise RequestError(f"sampling field {field!r} given both in 'sampling_parameters' and as input {name!r}")
        fields[field] = read(name, inputs[name])
    return fields


_INT_FIELDS = ("max_tokens", "top_k", "seed", "logprobs", "n", "prompt_logprobs", "priority")
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
                 "ttft_slo_ms")


def _vllm_json_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Numeric strings -> numbers."""
    fields = dict(fields)
    for names, convert in ((_INT_FIELDS, int), (_FLOAT_FIELDS, float)):
        for name in names:
            value = fields.get(name)
            if isinstance(value, str):
                try:
                    fields[name] = convert(value)
                except ValueError:
                    raise RequestError(f"sampling field {name!r} must be a number, got {value!r}") from None
    return fields


def parse_request(inputs: Mapping[str, np.ndarray]) -> ParsedRequest:
    """Validates everything that can be checked without the engine; raises RequestError."""
    unknown = sorted(set(inputs) - KNOWN_INPUTS)
    if unknown:
        raise RequestError(f"unknown input(s): {', '.join(unknown)}")
    prompt = _prompt(inputs)
    flags = {name: _as_bool(name, inputs[name]) for name in _FLAGS if name in inputs}
    fields = _sampling_dict(inputs)
    if flags.get("return_logprobs") and fields.get("logprobs") is None:
        fields["logprobs"] = 0  # the sampled tokens' own logprobs
    try:
        params = SamplingParams.from_dict(fields)
    except RequestError:
        raise
    except (ValueError, TypeError) as e:
        raise RequestError(f"bad sampling parameters: {e}") from None
    return ParsedRequest(prompt=prompt, params=params, **flags)

"""The engine's `attention` argument: which attention library serves each path.

Three paths, because the libraries differ most between them: prompt rows ("prefill"), one-query
rows ("decode"), and any batch of a layer with attention sinks or a sliding window ("sinks",
GPT-OSS), which only some libraries support. "auto" takes each path's measured winners for the
GPU (kernels/configs/attention.json); a library name puts that library first on every path; and
"prefill=fa4,decode=triton" names a path's library (the paths not named stay auto). A named
library that cannot serve a batch (not installed, failed, a feature it lacks) leaves it to our
Triton kernels, which serve everything.
"""
from __future__ import annotations

ATTENTION_PATHS = ("prefill", "decode", "sinks")
ATTENTION_LIBRARIES = ("triton", "flashinfer", "fa4", "cudnn", "flash_attn")


def parse_attention(spec: str) -> dict[str, str]:
    """The library named for each path ("" or "auto": none, the GPU's table decides)."""
    spec = spec.strip()
    if spec in ("", "auto"):
        return {}
    if "=" not in spec:
        return dict.fromkeys(ATTENTION_PATHS, _library(spec))
    chosen = {}
    for part in spec.split(","):
        path, _, library = (s.strip() for s in part.partition("="))
        if path not in ATTENTION_PATHS:
            raise ValueError(f"attention: unknown path {path!r} in {spec!r}; paths are {ATTENTION_PATHS}")
        if path in chosen:
            raise ValueError(f"attention: path {path!r} named twice in {spec!r}")
        if library != "auto":
            chosen[path] = _library(library)
    return chosen


def _library(name: str) -> str:
    if name not in ATTENTION_LIBRARIES:
        raise ValueError(f"attention: unknown library {name!r}; libraries are {ATTENTION_LIBRARIES} or auto")
    return name

"""The optional libraries (attention, and FlashInfer's fused MoE): imported on first use, each
path's order from the measured table, and one warning (then our kernels) for a library that fails.

A library is imported only when a batch on a CUDA device first asks for it, so a CPU machine, CI
and a GPU without it pay nothing. An import that fails for any reason (not only a missing
package: a wheel built for another CUDA, a broken shared object) and a call that raises (a JIT
compile that fails on this machine, a shape it rejects) both switch that library off for the
process with one warning; the batch is then served by the next library in line, last of all by
our Triton kernels. A batch never fails because of an optional library.

kernels/configs/attention.json holds, per GPU name (torch.cuda.get_device_name), the libraries to
try on each path, fastest first, as measured by perf/bench_kernels.py on that GPU; "default" is
for GPUs not listed. FlashInfer's MoE ("flashinfer_moe", kernels/flashinfer_moe.py) is a name of
its own, so a failure there leaves FlashInfer's attention on (and the other way round); its
measured token ranges are in kernels/configs/moe.json.
"""
from __future__ import annotations

import functools
import importlib
import json
import logging
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger("laminar.attention")

TABLE = Path(__file__).parent / "configs" / "attention.json"
MODULES = {"flashinfer": "flashinfer", "fa4": "flash_attn.cute", "cudnn": "cudnn", "flash_attn": "flash_attn",
           "flashinfer_moe": "flashinfer.fused_moe"}

_modules: dict[str, ModuleType | None] = {}
_failed: dict[str, str] = {}


def imported(name: str) -> ModuleType | None:
    """The library's module, or None if it is not installed or has failed (warned once)."""
    if name in _failed:
        return None
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(MODULES[name])
        except ModuleNotFoundError as exc:  # not installed: our kernels serve, nothing to warn about
            log.debug("optional library %s not installed (%s)", name, exc)
            _modules[name] = None
        except Exception as exc:
            fail(name, exc)
            return None
    return _modules[name]


def fail(name: str, exc: BaseException) -> None:
    """Switches the library off for this process, with the one warning that says why."""
    if name not in _failed:
        _failed[name] = repr(exc)[:500]
        log.warning("optional library %s failed and is switched off; our Triton kernels serve its batches: %s",
                    name, _failed[name])


def failed() -> dict[str, str]:
    """The libraries switched off so far, with why (for logs and tests)."""
    return dict(_failed)


@functools.cache
def table(path: Path = TABLE) -> dict[str, dict]:
    """A measured-winners table's entries by GPU name (attention.json's by default)."""
    return json.loads(path.read_text())["gpus"]


def measured_order(gpu: str | None, path: str) -> tuple[str, ...]:
    """The libraries to try on this path for a GPU of this name, fastest first (none off a GPU)."""
    if gpu is None:
        return ()
    return tuple(table().get(gpu, table()["default"])[path])


def order(device: torch.device, path: str, chosen: dict[str, str], excluded: frozenset[str]) -> tuple[str, ...]:
    """The libraries to try for one batch: the one the engine's `attention` argument names for the
    path, else the table's; minus those switched off or failed. Our kernels ("triton") end every line."""
    if path in chosen:
        names = (chosen[path],)
    else:
        names = measured_order(torch.cuda.get_device_name(device) if device.type == "cuda" else None, path)
    return tuple(n for n in names if n != "triton" and n not in excluded and n not in _failed)

"""Kernel tests run on the GPU at real sizes, or on the CPU under Triton's interpreter at small ones.

Triton reads TRITON_INTERPRET when a @triton.jit decorator runs, so it must be set before
any kernel module is imported: pytest imports this file before the test modules.
"""
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"

# Make `laminar` and `laminar_kernels` importable without an install (the latter is kernels/ renamed).
sys.path.insert(0, str(ROOT / "backend_src"))
if "laminar_kernels" not in sys.modules:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "laminar_kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
    )
    try:
        import laminar_kernels  # noqa: F401  (installed package wins)
    except ImportError:
        module = importlib.util.module_from_spec(spec)
        sys.modules["laminar_kernels"] = module
        spec.loader.exec_module(module)


import pytest  # noqa: E402

_real_empty, _real_empty_like = torch.empty, torch.empty_like
# `with torch.device(d)` (the model builds its parameters under one) learns which functions are
# tensor constructors once per process, at its first call: were that inside poison_allocations, it
# would learn the stand-in below, and every later model would be built on the CPU. Learn them now.
with torch.device("meta"):
    torch.empty(0)


def _poisoned(t: torch.Tensor) -> torch.Tensor:
    if t.dtype in (torch.int32, torch.int64):
        return t.fill_(-7)  # an index no kernel writes
    return t.fill_(float("nan")) if t.is_floating_point() else t


@pytest.fixture(autouse=True)
def poison_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN-fills every float buffer the kernels allocate (and -7-fills int32/int64 ones), so an element
    they fail to write fails the test."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poisoned(_real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poisoned(_real_empty_like(*a, **k)))

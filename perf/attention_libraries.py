"""The attention libraries' engine wrappers (laminar_kernels.attention.LIBRARIES) as peer columns
of the kernel benchmark: FlashInfer, FlashAttention-4, cuDNN paged SDPA, each over our paged
cache exactly as the engine calls it, where installed and able to serve the batch.

Each library is timed eagerly (launches included, as the engine runs it: none of them is used
inside a CUDA graph), while ours is timed in graph replays; its first call (JIT compile, cuDNN
graph build) runs before the timing. A library that fails is reported and left out.
"""
from __future__ import annotations

from typing import Callable

import torch

from laminar_kernels.attention import LIBRARIES
from laminar_kernels.attention_libs import MODULES, fail, failed, imported

COLUMNS = ("flashinfer", "fa4", "cudnn")
TITLES = {"flashinfer": "FlashInfer", "fa4": "FA4", "cudnn": "cuDNN paged"}


def versions() -> dict[str, str]:
    """Each library's installed version (or why it is absent), for the results' header."""
    out = {}
    for name in COLUMNS:
        module = imported(name)
        out[name] = (getattr(module, "__version__", "installed") if module is not None
                     else failed().get(name, f"{MODULES[name]} not installed"))
    return out


def runs(q, k_cache, v_cache, meta, scale: float, sinks=None, window: int = 0) -> dict[str, Callable[[], torch.Tensor]]:
    """One call per library that can serve this batch, each having run once (compiled) already."""
    out = {}
    for name in COLUMNS:
        can_serve, run = LIBRARIES[name]
        if name in failed() or not can_serve(q, k_cache, meta, sinks, window):
            continue
        def fn(run=run, buf=torch.empty_like(q)) -> torch.Tensor:
            return run(q, k_cache, v_cache, meta, scale, buf, sinks, window)

        try:
            fn()
            torch.cuda.synchronize()
        except Exception as exc:  # a library failing here is a finding, not a crash
            fail(name, exc)
            print(f"{name} failed: {repr(exc)[:300]}", flush=True)
            continue
        out[name] = fn
    return out


def columns(timer, fns: dict[str, Callable[[], torch.Tensor]], ours_ms: float, ref: torch.Tensor) -> dict:
    """Per library: median ms (eager), ours' time over its (speedup of the library), and its
    error against the reference."""
    res = {}
    for name, fn in fns.items():
        ms, _ = timer.ms(fn, capture=False)
        out = fn().view_as(ref).float()
        res[name] = {"ms": ms, "speedup_vs_ours": ours_ms / ms,
                     "rel_diff_vs_ref": ((out - ref.float()).norm() / ref.float().norm()).item()}
    return {"libraries": res} if res else {}


def note(r: dict, unit: float = 1e3) -> str:
    return "".join(f"  {name} {v['ms'] * unit:.1f} x{v['speedup_vs_ours']:.2f}" for name, v in r.get("libraries", {}).items())


def head(rows: list[dict]) -> tuple[str, str, Callable[[dict, float], str]]:
    """Markdown header, rule and row cells of the library columns present in any row."""
    names = [n for n in COLUMNS if any(n in r.get("libraries", {}) for r in rows)]

    def cells(r: dict, unit: float) -> str:
        libs = r.get("libraries", {})
        return "".join(f" {libs[n]['ms'] * unit:.3g} | {libs[n]['speedup_vs_ours']:.2f} | {libs[n]['rel_diff_vs_ref']:.1e} |"
                       if n in libs else " | | |" for n in names)

    return ("".join(f" {TITLES[n]} | {TITLES[n]} speedup over ours | {TITLES[n]} diff |" for n in names),
            "---:|---:|---:|" * len(names), cells)

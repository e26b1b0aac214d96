"""Where a step's time goes: its device kernels over a few steps (torch.profiler, CUDA activity only,
so the host pays little for it), bucketed by kernel name into the MoE, attention, dense GEMMs and
everything else (norms, RoPE, KV store, router, copies, sampling), and the time the device sat
idle within the step: host time on the critical path. Works with CUDA graphs (the profiler sees
each kernel a graph replays), so the next gap shows without opening a trace.
"""
from __future__ import annotations

from typing import Callable

import torch

# Lower-case name fragments per category, first match wins (the MoE GEMMs' names contain "gemm").
CATEGORIES = (
    ("moe", ("moe_", "_count_kernel", "_prefix_kernel", "_scatter_kernel", "_topk_sum_kernel",
             "_quantize_rows_kernel")),
    ("attention", ("_decode_split_kernel", "_decode_reduce_kernel", "_prefill_kernel", "flashinfer",
                   "batchdecode", "batchprefill", "flash_fwd", "flash_attn", "fmha", "cudnn", "sdpa")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "_fp8_linear_kernel")),
)
OTHER = "other"
COLUMNS = tuple(name for name, _ in CATEGORIES) + (OTHER,)


def category(kernel: str) -> str:
    name = kernel.lower()
    return next((cat for cat, parts in CATEGORIES if any(p in name for p in parts)), OTHER)


def summarize(kernels: list[tuple[str, float, float]], steps: int, step_ms: float) -> dict:
    """kernels: (name, start us, end us) of every device activity over `steps` steps; step_ms: the
    step's wall time measured without the profiler. Returns per-step ms per category, the kernel
    count, the device's busy time (overlaps counted once) and idle_ms = step_ms - busy."""
    totals = dict.fromkeys(COLUMNS, 0.0)
    for name, start, end in kernels:
        totals[category(name)] += end - start
    busy, reach = 0.0, float("-inf")
    for _, start, end in sorted(kernels, key=lambda k: k[1]):
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    busy_ms = busy / 1e3 / steps
    result = {f"{cat}_ms": us / 1e3 / steps for cat, us in totals.items()}
    result.update(steps=steps, step_ms=step_ms, kernels_per_step=len(kernels) / steps, busy_ms=busy_ms,
                  idle_ms=max(0.0, step_ms - busy_ms))
    return result


def device_kernels(step: Callable[[], object], steps: int) -> list[tuple[str, float, float]]:
    """Runs `step` `steps` times under the profiler; returns its device activities (kernels, copies,
    fills). Each step must end synchronised with the device (an engine step does: it reads tokens)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
    return [(e.name, e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]


def breakdown(step: Callable[[], object], steps: int, step_ms: float, device: torch.device) -> dict | None:
    """summarize() of `steps` profiled steps on a CUDA device; None elsewhere (CPU ops are not kernels)."""
    if device.type != "cuda":
        return None
    return summarize(device_kernels(step, steps), steps, step_ms)

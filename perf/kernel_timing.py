"""GPU timing for the kernel benchmarks: CUDA-graph replays with the L2 flushed before each.

A graph replay shows the kernels' GPU time without Python launch gaps (the engine replays
graphs too); flushing L2 first keeps small working sets from being timed out of cache.
Ops that cannot be captured (host syncs) fall back to eager launches, flushed the same way.
"""
from __future__ import annotations

import statistics
from typing import Callable

import torch

FLUSH_BYTES = 256 << 20  # several times any Hopper L2


class Timer:
    def __init__(self, reps: int = 30, warmup: int = 3) -> None:
        self.reps, self.warmup = reps, warmup
        self._flush = torch.empty(FLUSH_BYTES, dtype=torch.int8, device="cuda")

    def _capture(self, fn: Callable[[], object]) -> Callable[[], object]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay

    def ms(self, fn: Callable[[], object], capture: bool = True) -> tuple[float, str]:
        """Median milliseconds of fn and how it ran ('graph' or 'eager')."""
        try:
            if not capture:
                raise RuntimeError("eager asked for")
            run, mode = self._capture(fn), "graph"
        except Exception:  # not capturable: time eager launches
            torch.cuda.synchronize()
            for _ in range(self.warmup):
                fn()
            run, mode = fn, "eager"
        times = []
        for _ in range(self.reps):
            self._flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times), mode

    def best(self, fns: dict[str, Callable[[], object]]) -> tuple[float, str]:
        """Fastest of several ways to run one op (failures skipped): (ms, name), nan if none ran."""
        res = []
        for name, fn in fns.items():
            try:
                res.append((self.ms(fn)[0], name))
            except Exception:
                continue
        return min(res) if res else (float("nan"), "none")


def rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp32."""
    out, ref = out.float(), ref.float()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()

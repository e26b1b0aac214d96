"""Host tensors to the device without waiting for the device.

A blocking host-to-GPU copy synchronizes the stream: it waits for every kernel already queued,
so building the next step's inputs would wait for the step in flight (asynchronous scheduling
overlaps exactly those). The copy here goes from pinned memory with non_blocking: it is queued
on the stream like a kernel, and PyTorch's caching host allocator keeps the pinned buffer alive
until the copy has run.
"""
from __future__ import annotations

import torch


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """host on device, queued behind the device's work (the host tensor itself on the CPU)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def list_to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return to_device(torch.tensor(values, dtype=dtype), device)

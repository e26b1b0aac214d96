"""Small helpers shared by the kernel launchers."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


def jit_sized(*per_batch: str):
    """triton.jit that does not specialise the named arguments (token counts, table widths).

    Triton compiles a variant per value class of each integer argument (== 1, divisible by
    16); for sizes that change every batch that means compiles in the middle of serving,
    each stalling every running request for a second or more. One variant serves all sizes.
    """
    return triton.jit(do_not_specialize=list(per_batch))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact (ieee) dots so the fp32 model test stays tight; 16-bit ones use tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def to_tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """Maps a torch float dtype to the Triton one used for in-kernel casts."""
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[dtype]


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int) -> int:
    """Multiprocessor count, used to size split-K grids; a nominal 8 off-GPU (interpreter)."""
    if not torch.cuda.is_available():
        return 8
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sms(t: torch.Tensor) -> int:
    """Multiprocessor count of the device that holds t."""
    return num_sms(t.device.index or 0) if t.is_cuda else num_sms(-1)


def next_pow2(n: int) -> int:
    """Triton block shapes must be powers of two."""
    return triton.next_power_of_2(max(int(n), 1))

"""Works around two Triton CPU interpreter bugs (seen in Triton 3.9); applied only when TRITON_INTERPRET is on.

- bf16 dots: the interpreter stores bf16 as uint16 and its create_dot feeds that storage
  straight to numpy. Upcasting bf16 operands to fp32 first gives the exact products the GPU's
  tensor cores compute.
- casts to float8_e4m3fn: its bit-level converter drops the carry of a rounded-up mantissa
  (7.9 becomes 4.0), rounds ties away from even and flushes subnormals. torch's conversion
  (round to nearest even), after clamping to +-448 as the GPU's saturating cvt does, gives
  the GPU's bytes.
"""
from __future__ import annotations

import triton
import triton.language as tl


def patch_interpreter_bf16_dot() -> None:
    """Idempotently wraps the interpreter's dot builder so bf16 operands are widened to fp32."""
    if not triton.knobs.runtime.interpret:
        return
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_laminar_bf16_fix", False):
        return
    original = builder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot._laminar_bf16_fix = True
    builder.create_dot = create_dot
    _patch_fp8_cast(builder)


def _patch_fp8_cast(builder) -> None:
    """Routes float -> float8e4nv casts through torch (see the module docstring)."""
    import numpy as np
    import torch
    from triton.runtime import interpreter

    original = builder.create_fp_to_fp

    def create_fp_to_fp(self, src, dst_type, rounding_mode):
        if dst_type.scalar != tl.float8e4nv or src.dtype.scalar == tl.float8e4nv:
            return original(self, src, dst_type, rounding_mode)
        wide = self.cast_impl(src, tl.float32) if src.dtype.scalar == tl.bfloat16 else src
        values = torch.from_numpy(np.ascontiguousarray(wide.data, dtype=np.float32)).clamp(-448.0, 448.0)
        return interpreter.TensorHandle(values.to(torch.float8_e4m3fn).view(torch.uint8).numpy(), tl.float8e4nv)

    builder.create_fp_to_fp = create_fp_to_fp

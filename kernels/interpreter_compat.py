"""Works around Triton's CPU interpreter multiplying bf16 dot operands as raw uint16 bits.

The interpreter stores bf16 as uint16 and its create_dot feeds that storage straight to
numpy (seen in Triton 3.9). Upcasting bf16 operands to fp32 first gives the exact
products the GPU's tensor cores compute. Applied only when TRITON_INTERPRET is on.
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

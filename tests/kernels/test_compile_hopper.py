"""Kernels that CPU runs cannot execute as compiled compile for Hopper (sm_90) without a GPU.

CPU runs execute the kernels under Triton's interpreter, which accepts code that the GPU compiler
refuses (an FP8 MoE form once failed only on the H100: a module global in its epilogue). Triton's
NVIDIA backend compiles to PTX and SASS without a device, so this test compiles every form of
kernels.fp8_linear's kernel (W8A16 and W8A8, block and channel scales, the output of one split or
of several) for sm_90, and kernels.moe_mxfp4's expert write-out with the inline-PTX upcast that the
interpreter replaces by plain Triton. The interpreter is set for this process by the conftest, so
each compile runs in a fresh interpreter without it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAD = '''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
TARGET, OPTIONS = GPUTarget("cuda", 90, 32), {"num_warps": 4, "num_stages": 3}


def compile_for_sm90(fn, signature, consts):
    signature = {**signature, **{name: "constexpr" for name in consts}}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts), target=TARGET, options=OPTIONS)
'''
SCRIPTS = {"fp8_linear": HEAD + r'''
from laminar_kernels.fp8_linear import _fp8_linear_kernel

ints = ["n_rows", "n_out", "k_dim", "k_split", "stride_am", "stride_asm", "stride_bn", "stride_bsn", "stride_cs",
        "stride_cm"]
for a8, scale_block, (bm, bn, bk), out in [(False, 128, (16, 32, 512), "*bf16"), (False, 0, (16, 32, 128), "*fp32"),
                                           (True, 128, (64, 64, 128), "*fp32"), (True, 0, (128, 128, 128), "*bf16")]:
    signature = {"a_ptr": "*fp8e4nv" if a8 else "*bf16", "as_ptr": "*fp32", "b_ptr": "*fp8e4nv", "bs_ptr": "*fp32",
                 "c_ptr": out, **{name: "i32" for name in ints}}
    consts = {"A8": a8, "SCALE_BLOCK": scale_block, "PRECISION": "tf32", "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
              "GROUP_M": 8}
    assert compile_for_sm90(_fp8_linear_kernel, signature, consts).asm["cubin"], (a8, scale_block)
print("compiled")
''', "mxfp4_dequantize": HEAD + r'''
from laminar_kernels.moe_mxfp4 import _dequantize_kernel

ints = ["n_rows", "total_rows", "k_dim", "stride_we", "stride_wn", "stride_se", "stride_sg", "stride_oe", "stride_on"]
for out in ("*bf16", "*fp16"):
    signature = {"w_ptr": "*u8", "s_ptr": "*u8", "out_ptr": out, **{name: "i32" for name in ints}}
    compiled = compile_for_sm90(_dequantize_kernel, signature, {"ASM": True, "BLOCK_R": 64, "TILES": 4})
    assert "mul.rn.bf16x2" in compiled.asm["ptx"] and compiled.asm["cubin"], out
print("compiled")
'''}


@pytest.mark.parametrize("kernel", sorted(SCRIPTS))
def test_kernel_compiles_for_sm90(kernel: str, tmp_path: Path) -> None:
    pytest.importorskip("triton.backends.nvidia")
    (tmp_path / "laminar_kernels").symlink_to(ROOT / "kernels")  # kernels/ under its package name
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT / "backend_src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", SCRIPTS[kernel]], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]

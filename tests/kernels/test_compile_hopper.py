"""The FP8 dense kernel compiles for Hopper (sm_90) on a machine without a GPU.

CPU runs execute the kernels under Triton's interpreter, which accepts code that the GPU compiler
refuses (an FP8 MoE form once failed only on the H100: a module global in its epilogue). Triton's
NVIDIA backend compiles to PTX and SASS without a device, so this test compiles every form of
kernels.fp8_linear's kernel (W8A16 and W8A8, block and channel scales, the output of one split or
of several) for sm_90. The interpreter is set for this process by the conftest, so the compile runs
in a fresh interpreter without it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from laminar_kernels.fp8_linear import _fp8_linear_kernel

ints = ["n_rows", "n_out", "k_dim", "k_split", "stride_am", "stride_asm", "stride_bn", "stride_bsn", "stride_cs",
        "stride_cm"]
for a8, scale_block, (bm, bn, bk), out in [(False, 128, (16, 32, 512), "*bf16"), (False, 0, (16, 32, 128), "*fp32"),
                                           (True, 128, (64, 64, 128), "*fp32"), (True, 0, (128, 128, 128), "*bf16")]:
    signature = {"a_ptr": "*fp8e4nv" if a8 else "*bf16", "as_ptr": "*fp32", "b_ptr": "*fp8e4nv", "bs_ptr": "*fp32",
                 "c_ptr": out, **{name: "i32" for name in ints}}
    consts = {"A8": a8, "SCALE_BLOCK": scale_block, "PRECISION": "tf32", "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk,
              "GROUP_M": 8}
    signature.update({name: "constexpr" for name in consts})
    compiled = triton.compile(ASTSource(fn=_fp8_linear_kernel, signature=signature, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 3})
    assert compiled.asm["cubin"], (a8, scale_block)
print("compiled")
'''


def test_fp8_linear_kernel_compiles_for_sm90(tmp_path: Path) -> None:
    pytest.importorskip("triton.backends.nvidia")
    (tmp_path / "laminar_kernels").symlink_to(ROOT / "kernels")  # kernels/ under its package name
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT / "backend_src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]

#!/usr/bin/env bash
# One device call for the attention libraries (issue 24): installs the carried wheels from .whl/
# (those build.sh pins; the machine has no index), reports which libraries import, checks each
# library's engine wrapper against the torch reference (mixed, decode-only and prompt-only batches,
# sinks and windows where it serves them), then times them beside our kernels and SDPA.
#   COMMIT=$(git rev-parse --short HEAD) bash perf/gpu_attention_session.sh
# WHEELS (default .whl) names the folders installed from: every *.whl, and every *.tar.xz unpacked
# as an installed tree. .whl/ holds flashinfer-python 0.6.13, apache-tvm-ffi, nvidia-cudnn-frontend
# 1.32.0 and FlashAttention-4's small wheels (43 MiB); FA4's nvidia-cutlass-dsl-libs-cu13 wheel is
# 92 MiB, over the device tool's 64 MiB a call, so .fa4/ carries it as an xz tar of its unpacked tree
# (61 MiB), in a second call on the same warm machine: WHEELS=".fa4 <where the first call kept .whl>".
# TEST_S / BENCH_S bound the steps; SECTIONS picks bench_kernels sections (default prefill decode sinks).
# MOE=1 then checks and times FlashInfer's SM90 MXFP4 MoE (issue 21) with the same wheels: its kernel and
# GPU tests, and perf/bench_moe_mxfp4.py's FlashInfer column beside our kernel (MOE_S bounds it).
# FlashInfer 0.6.13 ships no compiled SM90 CUTLASS MoE: its first call compiled for over 330 s on an
# H100 (2026-12-07). MOE_BUILD_S=N first spends up to N s building that module alone (nvcc, 16 jobs)
# into .ficache, which stays on a warm machine between calls: a build cut by its limit goes on
# where it stopped in the next call (SECTIONS="" skips the attention tests and benchmark in those calls).
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
mkdir -p /tmp/site
for dir in ${WHEELS:-.whl}; do
  ls "$dir"/*.whl >/dev/null 2>&1 && { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site "$dir"/*.whl || echo "wheel install from $dir failed: its libraries fall back to our kernels"; }
  for tree in "$dir"/*.tar.xz; do [ -e "$tree" ] && tar -C /tmp/site -xJf "$tree"; done
done
export PYTHONPATH="$PYTHONPATH:/tmp/site" FLASHINFER_WORKSPACE_BASE="$PWD/.ficache" MAX_JOBS=16
{
  gpu_info
  python3 - <<'PY'
import logging, torch, triton
logging.basicConfig(level=logging.WARNING)
import laminar_kernels.attention_libs as libs
print("torch", torch.__version__, "triton", triton.__version__)
for name in ("flashinfer", "fa4", "cudnn", "flash_attn"):
    m = libs.imported(name)
    print(name, getattr(m, "__version__", "imported") if m is not None else libs.failed().get(name, "not installed"))
PY
  # FlashInfer compiles one module per (dtype, head size, window or not): its windowed cases are left out here.
  [ -n "${SECTIONS-x}" ] && timeout "${TEST_S:-90}" python3 -m pytest -q -rs -p no:cacheprovider tests/kernels/test_attention_libs.py \
    -k "real and not (flashinfer and 128)" 2>&1 | tail -40
  [ -n "${SECTIONS-x}" ] && time timeout "${BENCH_S:-240}" python3 perf/bench_kernels.py --out-dir "$OUT" --sections ${SECTIONS:-prefill decode sinks} \
    --no-flashinfer-variants --commit "${COMMIT:-unknown}" \
    --command "bash perf/gpu_attention_session.sh (python3 perf/bench_kernels.py --sections ${SECTIONS:-prefill decode sinks} --no-flashinfer-variants)"
  if [ -n "$MOE_BUILD_S" ]; then
    time timeout "$MOE_BUILD_S" python3 -c "from flashinfer.jit.fused_moe import gen_cutlass_fused_moe_sm90_module as g
g().build(verbose=False)" 2>&1 | tail -5
    echo "moe build rc=$?"
  fi
  if [ -n "$MOE" ]; then
    timeout "${MOE_S:-240}" python3 -m pytest -q -rfs -p no:cacheprovider tests/kernels/test_flashinfer_moe.py \
      tests/gpu/test_flashinfer_moe_gpu.py 2>&1 | tail -15
    timeout "${MOE_S:-240}" python3 perf/bench_moe_mxfp4.py --skip-old --out-dir "$OUT" 2>&1 | tail -16
  fi
} 2>&1 | tee "$OUT/log"

#!/usr/bin/env bash
# One device call for the attention libraries (issue 24): installs the carried wheels from .whl/
# (those build.sh pins; the machine has no index), reports which libraries import, checks each
# library's engine wrapper against the torch reference (mixed, decode-only and prompt-only batches,
# sinks and windows where it serves them), then times them beside our kernels and SDPA.
#   COMMIT=$(git rev-parse --short HEAD) bash perf/gpu_attention_session.sh
# .whl/ for the device tool (64 MiB a call): flashinfer-python 0.6.13, apache-tvm-ffi 0.1.15.post2 and
# nvidia-cudnn-frontend 1.32.0 (28 MiB) fit; FlashAttention-4 needs nvidia-cutlass-dsl-libs-cu13 (92 MiB)
# too, so it runs only where build.sh installed it (a machine with a package index).
# TEST_S / BENCH_S bound the steps; SECTIONS picks bench_kernels sections (default prefill decode sinks).
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
mkdir -p /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || echo "wheel install failed: every library falls back to our kernels"
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
  timeout "${TEST_S:-90}" python3 -m pytest -q -rs -p no:cacheprovider tests/kernels/test_attention_libs.py \
    -k "real and not (flashinfer and 128)" 2>&1 | tail -40
  time timeout "${BENCH_S:-240}" python3 perf/bench_kernels.py --out-dir "$OUT" --sections ${SECTIONS:-prefill decode sinks} \
    --no-flashinfer-variants --commit "${COMMIT:-unknown}" \
    --command "bash perf/gpu_attention_session.sh (python3 perf/bench_kernels.py --sections ${SECTIONS:-prefill decode sinks} --no-flashinfer-variants)"
} 2>&1 | tee "$OUT/log"

#!/usr/bin/env bash
# One device call: FlashInfer beside our attention kernels and SDPA (bench_kernels decode + prefill).
# FlashInfer travels as .whl/fi.tar.xz (flashinfer-python with the CUDA sources its attention JIT
# needs) plus the apache-tvm-ffi wheel: see perf/README.md. Its JIT cache stays in .ficache, so a
# second call on a warm machine reuses the compiled modules.
set -o pipefail
export PYTHONUNBUFFERED=1
mkdir -p /tmp/pkg /tmp/site && ln -sfn "$PWD/kernels" /tmp/pkg/laminar_kernels
tar xJf .whl/fi.tar.xz -C /tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/apache_tvm_ffi-*.whl || exit 1
export PYTHONPATH="$PWD/backend_src:/tmp/pkg:/tmp/site" FLASHINFER_WORKSPACE_BASE="$PWD/.ficache" MAX_JOBS=16
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton, flashinfer; print(torch.__version__, triton.__version__, flashinfer.__version__)"
  time timeout "${BENCH_S:-540}" python3 perf/bench_kernels.py --out-dir perf/results --sections ${SECTIONS:-decode prefill} \
    --command "bash perf/gpu_flashinfer_session.sh (python3 perf/bench_kernels.py --sections ${SECTIONS:-decode prefill})"
} 2>&1 | tee "$OUT/log"
cp perf/results/kernels-*-decode-prefill.* "$OUT"/ 2>/dev/null
find .ficache -name "*.log" -exec cp {} "$OUT"/ \; 2>/dev/null
ls "$OUT"

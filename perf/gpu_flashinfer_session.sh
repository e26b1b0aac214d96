#!/usr/bin/env bash
# One device call with FlashInfer installed from .whl/ (fi.tar.xz: flashinfer-python with the CUDA
# sources its attention JIT needs; the apache-tvm-ffi wheel). Its JIT cache stays in .ficache, so
# a second call on a warm machine reuses the compiled modules.
#   bash perf/gpu_flashinfer_session.sh kernels   FlashInfer beside our kernels and SDPA (bench_kernels)
#   bash perf/gpu_flashinfer_session.sh engine    its tests, then the offline engine benchmark with it on and off
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
mkdir -p /tmp/site
tar xJf .whl/fi.tar.xz -C /tmp/site || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/apache_tvm_ffi-*.whl || exit 1
export PYTHONPATH="$PYTHONPATH:/tmp/site" FLASHINFER_WORKSPACE_BASE="$PWD/.ficache" MAX_JOBS=16
{
  gpu_info
  python3 -c "import torch, triton, flashinfer; print(torch.__version__, triton.__version__, flashinfer.__version__)"
  if [ "$1" = engine ]; then
    timeout "${TEST_S:-240}" python3 -m pytest -q -rf -p no:cacheprovider \
      ${TESTS:-tests/kernels/test_flashinfer.py tests/gpu/test_flashinfer_gpu.py}
    for on in 1 0; do
      LAMINAR_FLASHINFER=$on timeout "${BENCH_S:-200}" python3 perf/bench_offline.py --model perf/models/qwen3-30b-a3b \
        --load-format dummy --modes ${MODES:-layered:8192 chunked:2048} --prompts 8192 --tag "flashinfer$on" --out-dir "$OUT"
    done
  else
    time timeout "${BENCH_S:-540}" python3 perf/bench_kernels.py --out-dir "$OUT" --sections ${SECTIONS:-decode prefill} \
      --command "bash perf/gpu_flashinfer_session.sh kernels (python3 perf/bench_kernels.py --sections ${SECTIONS:-decode prefill})"
  fi
} 2>&1 | tee "$OUT/log"
find .ficache -name "*.log" -exec cp {} "$OUT"/ \; 2>/dev/null
ls "$OUT"

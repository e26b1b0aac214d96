#!/usr/bin/env bash
# One device call for the FP8 kernels: GPU tests, FP8 MoE tuning, the FP8 benchmark. Steps run when set:
#   TESTS=1  TUNE="shape..." [TOKENS="n..."]  BENCH="bench_fp8.py args"  (e.g. BENCH="--moe-shapes qwen3-30b-a3b")
# Step time limits: TEST_S, TUNE_S, BENCH_S (seconds). COMMIT names the commit in the results.
set -o pipefail
export PYTHONUNBUFFERED=1
mkdir -p /tmp/pkg && ln -sfn "$PWD/kernels" /tmp/pkg/laminar_kernels
export PYTHONPATH="$PWD/backend_src:$PWD/tests:/tmp/pkg"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"
  if [ -n "$TESTS" ]; then
    timeout ${TEST_S:-90} python3 -m pytest -q -rfs -n 8 -p no:cacheprovider tests/kernels/test_fp8.py 2>&1 \
      | grep -v "Warning\|warner\|bringing up" | tail -30
  fi
  if [ -n "$TUNE" ]; then
    timeout ${TUNE_S:-120} python3 perf/tune_moe.py --fp8 --shapes $TUNE ${TOKENS:+--tokens $TOKENS} > "$OUT/tune.log" 2>&1
    grep -v "^    T=" "$OUT/tune.log"
    cp kernels/configs/*_FP8_*.json "$OUT"/ 2>/dev/null
  fi
  if [ -n "$BENCH" ]; then
    timeout ${BENCH_S:-90} python3 perf/bench_fp8.py $BENCH --out-dir "$OUT" --commit "${COMMIT:-}" \
      --command "TESTS=$TESTS TUNE='$TUNE' TOKENS='$TOKENS' BENCH='$BENCH' bash perf/gpu_fp8_session.sh" \
      > "$OUT/bench.log" 2>&1
    grep -v "^moe \|^dense " "$OUT/bench.log"
  fi
} 2>&1 | tee "$OUT/log"

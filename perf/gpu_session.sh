#!/usr/bin/env bash
# One device call: GPU kernel tests at real sizes, MoE tuning, benchmark. Outputs land in $OUT.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
{
  gpu_info
  python3 -c "import torch, triton; print(torch.__version__, triton.__version__, hasattr(torch, '_grouped_mm'))"
  timeout "${TEST_S:-150}" python3 -m pytest ${TESTS:-tests/kernels} -q -rf --maxfail=10 -p no:cacheprovider 2>&1 | tail -40
  [ -z "$SKIP_TUNE" ] && timeout "${TUNE1_S:-200}" python3 perf/tune_moe.py --shapes qwen3-30b-a3b-tp1
  timeout "${BENCH_S:-170}" python3 perf/bench_kernels.py --out-dir perf/results \
    --command "bash perf/gpu_session.sh (python3 perf/bench_kernels.py --out-dir perf/results)"
  [ -z "$SKIP_TUNE" ] && timeout "${TUNE2_S:-60}" python3 perf/tune_moe.py --shapes qwen3-30b-a3b-tp2
} 2>&1 | tee "$OUT/log"
[ -z "$SKIP_TUNE" ] && cp kernels/configs/*.json "$OUT"/
cp perf/results/kernels-* "$OUT"/ 2>/dev/null
ls "$OUT"

#!/usr/bin/env bash
# One device call for the GPU engine: GPU engine tests (demo model: GPU == CPU, graphs == eager),
# then the offline benchmark on Qwen3-30B-A3B shapes with random weights. Results land in $OUT.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
{
  gpu_info
  timeout "${TEST_S:-240}" python3 -m pytest tests/gpu -q -rf -p no:cacheprovider -x
  timeout "${BENCH_S:-420}" python3 perf/bench_offline.py --model perf/models/qwen3-30b-a3b --load-format dummy \
    --out-dir perf/results ${BENCH_ARGS:-}
} 2>&1 | tee "$OUT/engine_log"
cp perf/results/offline-* "$OUT"/ 2>/dev/null
ls "$OUT"

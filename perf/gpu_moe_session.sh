#!/usr/bin/env bash
# One device call for the fused-MoE kernels: tuning, GPU MoE tests, this tree against main's kernels
# and vLLM (perf/moe_versions.py), the bench_kernels moe section. Each step runs when its variable is set:
#   TUNE="shape..." TOKENS="n..."  TESTS=1  VERSIONS="shape..."  BENCH=1
# Run from this tree's root; BASELINE (default ../../kernels: main's checkout around a .wt/ worktree).
# Step time limits: TUNE_S, TEST_S, VERSIONS_S (seconds).
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
{
  python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"
  if [ -n "$TUNE" ]; then
    timeout ${TUNE_S:-300} python3 perf/tune_moe.py --shapes $TUNE ${TOKENS:+--tokens $TOKENS} > "$OUT/tune.log" 2>&1
    grep -v "^    T=" "$OUT/tune.log"
    cp kernels/configs/*NVIDIA_H200*.json "$OUT"/
  fi
  if [ -n "$TESTS" ]; then  # after tuning: the tables it wrote are the ones tested
    timeout ${TEST_S:-150} python3 -m pytest -q -rf -n 8 -p no:cacheprovider tests/kernels/test_moe.py \
      tests/kernels/test_moe_gpt_oss.py 2>&1 | grep -v "Warning\|warner\|bringing up"
  fi
  if [ -n "$VERSIONS" ]; then
    timeout ${VERSIONS_S:-170} python3 perf/moe_versions.py --baseline "${BASELINE:-../../kernels}" --shapes $VERSIONS --out-dir "$OUT" \
      | grep -v "^{"
  fi
  if [ -n "$BENCH" ]; then
    timeout 120 python3 perf/bench_kernels.py --sections moe --out-dir perf/results \
      --command "TESTS=$TESTS TUNE='$TUNE' TOKENS='$TOKENS' VERSIONS='$VERSIONS' BENCH=1 bash perf/gpu_moe_session.sh" \
      | grep -v "^moe T="
    cp perf/results/kernels-*-moe.* "$OUT"/
  fi
} 2>&1 | tee "$OUT/log"

#!/usr/bin/env bash
# One device call for the Hopper MXFP4 MoE (issue 21). Each step runs when its variable is set; results in $OUT:
#   TESTS=1     GPU kernel tests of kernels.moe_mxfp4 (exact upcast, every form at GPT-OSS-20B's shapes)
#   VARIANTS=1  perf/mxfp4_variants.py (inline-PTX vs plain-Triton upcast)
#   TUNE="shape..." TOKENS="n..."  perf/tune_moe.py --mxfp4-kernel-layout (tables copied to $OUT)
#   BENCH=1     perf/bench_moe_mxfp4.py: bf16 vs old (release-layout) vs new MXFP4 kernel
#   GPU_TESTS=1 the GPT-OSS GPU tests (engine GPU == CPU, graphs == eager) and kernels.moe_mxfp4's tests
#   OFFLINE=1   perf/bench_offline.py GPT-OSS-20B (dummy) on this tree and on BASELINE's (main's) tree
# Step limits: TEST_S, VARIANTS_S, TUNE_S, BENCH_S, GPU_TESTS_S, OFFLINE_S (seconds).
set -o pipefail
export PYTHONUNBUFFERED=1
mkdir -p /tmp/pkg && ln -sfn "$PWD/kernels" /tmp/pkg/laminar_kernels
export PYTHONPATH="$PWD/backend_src:$PWD/tests:/tmp/pkg"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv 2>/dev/null
  python3 -c "import torch, triton; print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)"
  if [ -n "$TESTS" ]; then
    timeout "${TEST_S:-90}" python3 -m pytest -q -rf -x -n 8 -p no:cacheprovider tests/kernels/test_moe_mxfp4.py 2>&1 | tail -15
  fi
  if [ -n "$VARIANTS" ]; then
    timeout "${VARIANTS_S:-60}" python3 perf/mxfp4_variants.py 2>&1 | tee "$OUT/variants.jsonl" | tail -8
  fi
  for shape in $TUNE; do
    timeout "${TUNE_S:-100}" python3 perf/tune_moe.py --mxfp4-kernel-layout --shapes $shape ${TOKENS:+--tokens $TOKENS} \
      > "$OUT/tune-$shape.log" 2>&1
    grep -v "^    T=" "$OUT/tune-$shape.log" | tail -20
  done
  [ -n "$TUNE" ] && cp kernels/configs/*MXFP4H*.json "$OUT"/
  if [ -n "$BENCH" ]; then
    timeout "${BENCH_S:-120}" python3 perf/bench_moe_mxfp4.py --out-dir "$OUT" | tail -16
  fi
  if [ -n "$GPU_TESTS" ]; then
    timeout "${GPU_TESTS_S:-150}" python3 -m pytest -q -rf -p no:cacheprovider tests/gpu/test_gpt_oss_gpu.py \
      tests/kernels/test_moe_mxfp4.py -n 4 2>&1 | tail -8
  fi
  if [ -n "$OFFLINE" ]; then
    for tree in "$PWD" "${BASELINE:-$PWD/../..}"; do
      name=$([ "$tree" = "$PWD" ] && echo new || echo main)
      (cd "$tree" && mkdir -p /tmp/pkg-$name && ln -sfn "$tree/kernels" /tmp/pkg-$name/laminar_kernels &&
       PYTHONPATH="$tree/backend_src:/tmp/pkg-$name" timeout "${OFFLINE_S:-110}" python3 perf/bench_offline.py \
         --model perf/models/gpt-oss-20b --load-format dummy --modes layered:8192 --prompts 8192 \
         --tag "gpt-oss-20b-$name" --out-dir "$OUT" 2>&1 | tail -25)
    done
  fi
} 2>&1 | tee -a "$OUT/log"

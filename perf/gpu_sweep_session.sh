#!/usr/bin/env bash
# One device call for the serving sweep (perf/sweep.py): tritonserver + perf_analyzer on
# Qwen3-30B-A3B shapes with random weights, layered vs chunked prefill, ShareGPT and arXiv-like
# workloads at three Poisson request rates. Needs .devcarry (carry it; see
# /work/shared/device/stage.sh). Finishes within 9 minutes: the sweep starts no run after its
# deadline (SWEEP_DEADLINE_S, default 440 s) and is killed 40 s after it. $OUT gets 7 files:
# sweep.tar.gz (everything, profile exports included), analysis.json, analysis.md, the three PNGs
# and the log.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
CONFIG=${CONFIG:-perf/sweep_configs/gpu_qwen3_30b_a3b.json}
SWEEP=/tmp/sweep
{
  source .devcarry/devsetup.sh
  gpu_info
  laminar_pth  # after devsetup: the python3 whose site-packages the backend stub reads
  timeout $(( ${SWEEP_DEADLINE_S:-440} + 40 )) python3 perf/sweep.py --config "$CONFIG" --out-dir "$SWEEP" --deadline-s "${SWEEP_DEADLINE_S:-440}"
  echo "sweep rc=$?"
  cat "$SWEEP/analysis.md"
} 2>&1 | tee "$OUT/sweep_log"
tar -C "$SWEEP" --exclude=repo -czf "$OUT/sweep.tar.gz" .
cp "$SWEEP"/analysis.json "$SWEEP"/analysis.md "$SWEEP"/*.png "$OUT"/ 2>/dev/null
ls -la "$OUT"

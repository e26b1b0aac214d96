#!/usr/bin/env bash
# One device call for the serving sweep (perf/sweep.py): tritonserver + perf_analyzer on
# Qwen3-30B-A3B shapes with random weights, layered vs chunked prefill, ShareGPT and arXiv-like
# workloads at three Poisson request rates. Needs .devcarry (carry it; see
# /work/shared/device/stage.sh). Finishes within 9 minutes: the sweep starts no run after its
# deadline (SWEEP_DEADLINE_S, default 440 s) and is killed 40 s after it. $OUT gets 7 files:
# sweep.tar.gz (everything, profile exports included), analysis.json, analysis.md, the three PNGs
# and the log.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
CONFIG=${CONFIG:-perf/sweep_configs/gpu_qwen3_30b_a3b.json}
SWEEP=/tmp/sweep
{
  source .devcarry/devsetup.sh
  nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv
  # The Python backend stub ignores PYTHONPATH and imports from the first python3's site-packages.
  mkdir -p /tmp/pkg && ln -sfn "$PWD/kernels" /tmp/pkg/laminar_kernels
  site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf '%s\n%s\n' "$PWD/backend_src" /tmp/pkg > "$site/laminar-backend-src.pth"
  timeout $(( ${SWEEP_DEADLINE_S:-440} + 40 )) python3 perf/sweep.py --config "$CONFIG" --out-dir "$SWEEP" --deadline-s "${SWEEP_DEADLINE_S:-440}"
  echo "sweep rc=$?"
  cat "$SWEEP/analysis.md"
} 2>&1 | tee "$OUT/sweep_log"
tar -C "$SWEEP" --exclude=repo -czf "$OUT/sweep.tar.gz" .
cp "$SWEEP"/analysis.json "$SWEEP"/analysis.md "$SWEEP"/*.png "$OUT"/ 2>/dev/null
ls -la "$OUT"

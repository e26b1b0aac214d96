#!/usr/bin/env bash
# One device call for the in-process serving replay (perf/replay.py): no tritonserver, so no
# .devcarry. The gpu preset (Qwen3-30B-A3B shapes, dummy weights, 300 requests per cell) narrowed by
# REPLAY_ARGS. Per engine the arrivals alone span 131 s for ShareGPT's three rates and 525 s for
# arXiv-like's (more where the engine falls behind), plus the start (weights, graphs, profile), so
# a call takes one workload and a few engines or rates, e.g.
#   REPLAY_ARGS="--workloads sharegpt --engines layered-slo100 chunked-2048" COMMIT=<sha> bash perf/gpu_replay_session.sh
#   REPLAY_ARGS="--workloads arxiv --rates 2 --engines layered-slo100 chunked-2048" ...
#   REPLAY_ARGS="--workloads sharegpt --rates 8 16 --engines layered-slo100-tail-sf layered-slo100-tail
#     layered-slo100 chunked-2048 --numerator layered-slo100-tail-sf" ...   (issue 23's variants)
#   REPLAY_ARGS="--param model=perf/models/qwen3-8b --workloads sharegpt --engines layered-slo100-tail chunked-2048" ...
# Cells that would end after REPLAY_DEADLINE_S (default 480 s) are skipped and the replay is killed
# 60 s after it; the report is rewritten after every cell. $OUT gets replay.json, replay.md,
# requests.json and replay_log.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
{
  gpu_info
  timeout $(( ${REPLAY_DEADLINE_S:-480} + 60 )) python3 perf/replay.py --preset gpu --out-dir "$OUT" \
    --deadline-s "${REPLAY_DEADLINE_S:-480}" --commit "${COMMIT:-unknown}" ${REPLAY_ARGS:-}
  echo "replay rc=$?"
} 2>&1 | tee "$OUT/replay_log"

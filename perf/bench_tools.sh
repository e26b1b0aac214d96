#!/usr/bin/env bash
# aiperf (OpenAI chat endpoint, server token counts) and genai-perf (Triton gRPC) against a running
# `./build.sh serve`, one short run each; their exports go to perf/results/bench_tools/ (or $OUT).
#
#   ./build.sh serve &                # tritonserver on 8000/8001/8002, the OpenAI API on 9000
#   perf/bench_tools.sh               # OPENAI_URL, GRPC_URL, MODEL_DIR, CONCURRENCY, REQUESTS override
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OPENAI_URL=${OPENAI_URL:-http://localhost:9000}
GRPC_URL=${GRPC_URL:-localhost:8001}
MODEL_DIR=${MODEL_DIR:-$ROOT/demo_model}
OUT=${OUT:-$ROOT/perf/results/bench_tools}
LOAD=(--synthetic-input-tokens-mean 64 --synthetic-input-tokens-stddev 0 --output-tokens-mean 32
      --output-tokens-stddev 0 --extra-inputs ignore_eos:true
      --concurrency "${CONCURRENCY:-4}" --request-count "${REQUESTS:-32}")

mkdir -p "$OUT/aiperf" "$OUT/genai_perf"
"$ROOT/.venv/bin/aiperf" profile --model laminar --url "$OPENAI_URL" --endpoint-type chat --streaming \
  --use-server-token-count --tokenizer "$MODEL_DIR" "${LOAD[@]}" --ui-type none \
  --artifact-dir "$OUT/aiperf" | tee "$OUT/aiperf/console.txt"
(cd "$OUT/genai_perf" && "$ROOT/.venv/bin/genai-perf" profile -m laminar --endpoint-type kserve \
  --backend vllm --streaming -u "$GRPC_URL" --tokenizer "$MODEL_DIR" "${LOAD[@]}" \
  --artifact-dir "$OUT/genai_perf") | tee "$OUT/genai_perf/console.txt"

#!/usr/bin/env bash
# One device call that proves a merged tree: its GPU tests, then the engine benchmarks the open
# issues' targets are read from. Each step runs when its variable is set; results land in $OUT:
#   TESTS="dir..."  pytest on each tests/<dir> in turn, e.g. "gpu kernels" (TP tests skip on one GPU);
#                on an H100 (2026-12-07, 15988fe) tests/gpu took 63 s and tests/kernels 92 s (-n 8)
#   OFFLINE="model..."  perf/bench_offline.py on each perf/models/<model> (dummy weights), with
#                OFFLINE_ARGS (e.g. "--modes layered:8192 chunked:2048 --prompts 8192"); the first
#                model takes OFFLINE_FIRST_ARGS instead where set
#   STRUCTURED=1 perf/bench_structured.py on Qwen3-30B-A3B shapes; xgrammar's wheels come from
#                .devcarry/xgrammar/ (staged by hand: the device machine has no index)
#   MXFP4="tokens..."  perf/bench_moe_mxfp4.py at those MoE token counts (GPT-OSS-20B experts): bf16, the
#                in-register MXFP4 GEMM, the 16-bit write-out path and the engine's pick between them
# Step limits: TEST_S (each test folder), OFFLINE_S (each model), STRUCTURED_S, MXFP4_S (seconds). COMMIT names the commit.
# On an H100 (2026-12-08, 8703804) a Qwen3-30B-A3B bf16 mode spent 14 s besides the 328 s its arriving
# prompt waited for the decodes to end (fixed in 7ff15bb); the FP8 model's one mode took ~30 s (2026-12-07).
# --async-compare and :unfused double the modes each.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
export PYTHONPATH="$PWD/tests:$PYTHONPATH"
{
  gpu_info
  echo "commit ${COMMIT:-unknown}"
  for dir in $TESTS; do
    # -v: each test's result is printed as it ends, so a folder cut by its limit still says what passed.
    # tests/kernels at real sizes takes up to 22 GB a worker: 8 workers ran the H100 out of memory (2026-12-07).
    workers=8; [ "$dir" = kernels ] && workers=4
    timeout "${TEST_S:-300}" python3 -m pytest "tests/$dir" -v -rfs -n $workers -p no:cacheprovider -o faulthandler_timeout=240 \
      2>&1 | grep -v "Warning\|warner" > "$OUT/tests-$dir.log"
    grep -c PASSED "$OUT/tests-$dir.log"; grep -E "FAILED|ERROR|Timeout|passed|failed" "$OUT/tests-$dir.log" | tail -30
  done
  for model in $OFFLINE; do
    args=$OFFLINE_ARGS; [ "$model" = "${OFFLINE%% *}" ] && args=${OFFLINE_FIRST_ARGS:-$OFFLINE_ARGS}
    # SIGABRT at the limit: -X faulthandler writes every thread's stack into the log, so a cut run says where it was.
    timeout -s ABRT -k 15 "${OFFLINE_S:-150}" python3 -X faulthandler perf/bench_offline.py --model "perf/models/$model" --load-format dummy \
      --tag "$model" --out-dir "$OUT" $args > "$OUT/offline-$model.log" 2>&1
    echo "offline $model rc=$?"; grep -v '^ \|^{\|^}' "$OUT/offline-$model.log" | tail -30
  done
  if [ -n "$MXFP4" ]; then
    timeout "${MXFP4_S:-120}" python3 perf/bench_moe_mxfp4.py --skip-old --tokens $MXFP4 --out-dir "$OUT" 2>&1 | tail -16
  fi
  if [ -n "$STRUCTURED" ]; then
    python3 -c "import pydantic" 2>/dev/null || python3 -m pip install -q --no-index --no-deps .devcarry/xgrammar/pydantic*.whl \
      .devcarry/xgrammar/annotated_types*.whl .devcarry/xgrammar/typing_inspection*.whl
    python3 -m pip install -q --no-index --no-deps .devcarry/xgrammar/xgrammar*.whl .devcarry/xgrammar/apache_tvm_ffi*.whl
    timeout "${STRUCTURED_S:-150}" python3 perf/bench_structured.py --model perf/models/qwen3-30b-a3b --load-format dummy \
      --out "$OUT/structured-qwen3-30b-a3b.json" 2>&1 | tail -30
  fi
} 2>&1 | tee "$OUT/verify_log"

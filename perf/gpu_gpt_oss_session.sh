#!/usr/bin/env bash
# One device call for GPT-OSS (issue 16), under 9 minutes on one H100 / H200; results land in $OUT:
#   1. GPU tests: tiny GPT-OSS (both checkpoint formats) GPU == CPU tokens, graphs == eager, MXFP4 == dequantized;
#      the fused MoE with biases, clamp and MXFP4 at the 20B's shapes (tests/kernels/test_moe_gpt_oss.py).
#   2. The fused MoE at GPT-OSS-20B's expert shape, bf16 vs MXFP4 experts against the HBM floor.
#   3. The offline engine benchmark on dummy GPT-OSS-20B (MXFP4 experts): decode step at batch 64 vs its floor,
#      an 8k prompt layered vs chunked (512, 2048) during decode and alone: TTFT, TBT, expert bytes.
# CPU dry run of every piece at a tiny size: DRY_RUN=1 bash perf/gpu_gpt_oss_session.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
RESULTS=${RESULTS:-perf/results}
if [ -n "$DRY_RUN" ]; then
  TINY=$(mktemp -d)
  python3 - "$TINY" <<'PY'
import json, sys
cfg = json.load(open("perf/models/gpt-oss-20b/config.json"))
cfg.update(hidden_size=128, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
           head_dim=32, vocab_size=4096, layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=32)
json.dump(cfg, open(sys.argv[1] + "/config.json", "w"))
PY
  MODEL=$TINY; MOE_ARGS="--tiny"; BENCH_ARGS="--preset cpu --modes layered:1024 chunked:128 --prompts 256"
  TESTS="tests/test_gpt_oss.py tests/kernels/test_moe_gpt_oss.py tests/kernels/test_gpt_oss_model.py"; RESULTS=$TINY/results
else
  MODEL=perf/models/gpt-oss-20b; MOE_ARGS=""; BENCH_ARGS="--modes layered:8192 chunked:512 chunked:2048 --prompts 8192"
  TESTS="tests/gpu/test_gpt_oss_gpu.py tests/kernels/test_moe_gpt_oss.py tests/kernels/test_gpt_oss_model.py"
fi
{
  gpu_info
  git log --oneline -1 2>/dev/null
  timeout "${TEST_S:-200}" python3 -m pytest $TESTS -q -rf -p no:cacheprovider
  timeout "${MOE_S:-100}" python3 perf/bench_moe_mxfp4.py $MOE_ARGS --out-dir "$RESULTS"
  timeout "${BENCH_S:-190}" python3 perf/bench_offline.py --model "$MODEL" --load-format dummy $BENCH_ARGS \
    --tag gpt-oss-20b --out-dir "$RESULTS"
} 2>&1 | tee "$OUT/gpt_oss_log"
cp "$RESULTS"/kernels-moe-gpt-oss-* "$RESULTS"/offline-*gpt-oss-20b* "$OUT"/ 2>/dev/null
ls "$OUT"

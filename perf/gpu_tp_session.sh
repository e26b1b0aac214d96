#!/usr/bin/env bash
# One device call on nvidia-h200-x2: GPU tests (TP2 == TP1 over NCCL, graphs and eager), then the
# offline benchmark at TP1 and TP2 in the same call, so that the decode-step ratio compares like
# with like. Results (offline-*.json|md, engine_log) land in $OUT.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
BENCH=(python3 perf/bench_offline.py --model perf/models/qwen3-30b-a3b --load-format dummy --out-dir "$OUT"
       --modes layered:8192 chunked:512 --prompts ${PROMPTS:-8192})
{
  gpu_info
  timeout "${TEST_S:-150}" python3 -m pytest tests/gpu -q -rf -p no:cacheprovider
  timeout "${BENCH_S:-200}" "${BENCH[@]}" --tensor-parallel-size 1 --tag tp1
  timeout "${BENCH_S:-200}" "${BENCH[@]}" --tensor-parallel-size 2
  python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
tp1, tp2 = [json.loads(next(out.glob(f"offline-*-tp{n}.json")).read_text()) for n in (1, 2)]
lines = ["| mode | TP1 decode step ms | TP2 decode step ms | TP1/TP2 |", "|---|---|---|---|"]
for mode, r1 in tp1["modes"].items():
    r2 = tp2["modes"][mode]
    lines.append(f"| {mode} | {r1['decode_step_ms']:.2f} | {r2['decode_step_ms']:.2f} | {r1['decode_step_ms'] / r2['decode_step_ms']:.2f}x |")
(out / "tp-ratio.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
} 2>&1 | tee "$OUT/engine_log"
ls "$OUT"

#!/usr/bin/env bash
# One device call on a multi-GPU kind (nvidia-h100-x2 / nvidia-h200-x2, or larger): the GPU tests
# (TP2 == TP1 and PP2 == PP1 over NCCL, graphs and eager; TP2 x PP2 == TP1 with 4 GPUs), then the
# offline benchmark at TP1, TP2 and PP2 in the same call, so that the decode-step comparison sets
# like against like on one machine. Results (offline-*.json|md, tp-ratio.md, engine_log) land in $OUT.
source "$(dirname "${BASH_SOURCE[0]}")/gpu_prelude.sh"
BENCH=(python3 perf/bench_offline.py --model perf/models/qwen3-30b-a3b --load-format dummy --out-dir "$OUT"
       --modes layered:8192 chunked:512 --prompts ${PROMPTS:-8192})
{
  gpu_info
  timeout "${TEST_S:-240}" python3 -m pytest tests/gpu/test_tp_gpu.py tests/gpu/test_pp_gpu.py -q -rf -p no:cacheprovider
  timeout "${BENCH_S:-200}" "${BENCH[@]}" --tag tp1
  timeout "${BENCH_S:-200}" "${BENCH[@]}" --tensor-parallel-size 2
  timeout "${BENCH_S:-200}" "${BENCH[@]}" --pipeline-parallel-size 2
  python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {name: json.loads(next(out.glob(f"offline-*-{name}.json")).read_text()) for name in ("tp1", "tp2", "pp2")}
lines = ["| mode | TP1 decode step ms | TP2 decode step ms | PP2 decode step ms | TP1/TP2 | TP1/PP2 | PP2 TBT p99 ms (prompt) |",
         "|---|---|---|---|---|---|---|"]
for mode, r1 in runs["tp1"]["modes"].items():
    t1, t2, p2 = (runs[n]["modes"][mode]["decode_step_ms"] for n in ("tp1", "tp2", "pp2"))
    tbt = [p.get("tbt_p99_ms") for p in runs["pp2"]["modes"][mode].get("prompts", [])]
    lines.append(f"| {mode} | {t1:.2f} | {t2:.2f} | {p2:.2f} | {t1 / t2:.2f}x | {t1 / p2:.2f}x | {tbt} |")
(out / "tp-ratio.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
} 2>&1 | tee "$OUT/engine_log"
ls "$OUT"

"""Host cost of a step's grammar bitmask, without a GPU: the fill of ROWS rows under
bench_structured's LONG_SCHEMA (a JSON array of objects with a bounded string) over a vocabulary
of Qwen3-30B-A3B's size, each step after every row accepted one random allowed token.

Two grammars: xgrammar 0.2.8's own form of bounded strings (a counted repetition, "repetition")
and Laminar's (a chain of rules, "chain", laminar.structured_output); three fills: each row in
turn ("serial"), xgrammar's batch matcher with its threads started per call ("batch"), and the
engine's (`fill_bitmask`, on FILL_THREADS kept threads, "engine"). Prints and writes the median,
mean and max per step in ms and each grammar's compile time.

    python perf/bench_grammar_fill.py --out perf/results/grammar-fill-cpu/fill.json
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_structured import LONG_SCHEMA, with_tokenizer

from laminar import structured_output

FILLS = ("serial", "batch", "engine")


def bench(grammar_form: str, rows: int, steps: int, seed: int) -> dict:
    import xgrammar as xgr
    from transformers import AutoTokenizer

    model = with_tokenizer("perf/models/qwen3-30b-a3b", Path(tempfile.mkdtemp()))
    tokenizer = AutoTokenizer.from_pretrained(model)
    vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=[vocab - 1])
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    saved = structured_output.CHAIN_MAX_CHARS
    structured_output.CHAIN_MAX_CHARS = saved if grammar_form == "chain" else -1
    try:
        start = time.perf_counter()
        compiled = compiler.compile_grammar(structured_output.json_schema_grammar(json.dumps(LONG_SCHEMA)))
        compile_s = time.perf_counter() - start
    finally:
        structured_output.CHAIN_MAX_CHARS = saved
    matchers = [xgr.GrammarMatcher(compiled) for _ in range(rows)]
    bitmask = torch.empty((2 * rows, (vocab + 31) // 32), dtype=torch.int32)
    indices = list(range(0, 2 * rows, 2))  # every other row constrained, as in a mixed batch
    batch = xgr.BatchGrammarMatcher(structured_output.FILL_THREADS)
    fills = {
        "serial": lambda: [m.fill_next_token_bitmask(bitmask, i) for i, m in zip(indices, matchers)],
        "batch": lambda: batch.batch_fill_next_token_bitmask(matchers, bitmask, indices=indices),
        "engine": lambda: structured_output.fill_bitmask(matchers, bitmask, indices),
    }
    times: dict[str, list[float]] = {name: [] for name in FILLS}
    rng = random.Random(seed)
    for _ in range(steps):
        for name in FILLS:
            start = time.perf_counter()
            fills[name]()
            times[name].append(time.perf_counter() - start)
        allowed = ((bitmask[indices].unsqueeze(-1) >> torch.arange(32)) & 1).flatten(1)[:, :vocab]
        for row, matcher in enumerate(matchers):
            ids = allowed[row].nonzero().flatten()
            assert matcher.accept_token(int(ids[rng.randrange(len(ids))]))
    return {"compile_s": compile_s, **{name: {"median_ms": 1e3 * statistics.median(t), "mean_ms": 1e3 * statistics.mean(t),
                                              "max_ms": 1e3 * max(t)} for name, t in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()
    report = {"command": "python perf/bench_grammar_fill.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
              "host": f"{platform.processor() or platform.machine()}, {structured_output.usable_cores()} cores",
              "fill_threads": structured_output.FILL_THREADS, "rows": args.rows, "steps": args.steps}
    for form in ("repetition", "chain"):
        report[form] = bench(form, args.rows, args.steps, args.seed)
        print(form, json.dumps(report[form]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

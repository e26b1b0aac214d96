"""Does compiling a JSON schema keep the engine thread from running? (issue 27: the compile-stall target)

The engine compiles grammars on its GrammarCompiler's thread pool; a running stream is stalled by
a compile only if the compile holds the GIL. This compiles schemas through that compiler, over
the synthetic tokenizer perf/bench_structured.py gives a config-only model (Qwen3's 152k
vocabulary), while the main thread loops, and prints one compile's time and the longest gap
between two iterations of the main thread's loop (CPU only, no weights):
  python perf/xgrammar_gil.py
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench_structured import distinct_schema, with_tokenizer

from laminar.structured_output import GrammarCompiler

MODEL = Path(__file__).parent / "models" / "qwen3-30b-a3b"


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        model = with_tokenizer(str(MODEL), Path(scratch))
        vocab = json.loads((MODEL / "config.json").read_text())["vocab_size"]
        compiler = GrammarCompiler(model, vocab, [vocab - 1])
        compiler.submit({"json": distinct_schema(-1)}).result()  # the tokenizer's view is built first
        start = time.perf_counter()
        compiler.submit({"json": distinct_schema(-2)}).result()
        print(f"one schema compiled in {(time.perf_counter() - start) * 1e3:.1f} ms")
        futures = [compiler.submit({"json": distinct_schema(j)}) for j in range(5)]
        gaps, last = [], time.perf_counter()
        while not all(f.done() for f in futures):
            sum(range(1000))
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        print(f"main thread while 5 schemas compiled: {len(gaps)} iterations, longest gap {max(gaps) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()

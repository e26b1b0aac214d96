"""Does xgrammar hold the GIL while it compiles a JSON schema? (issue 27: the compile-stall target)

The engine compiles grammars on a thread pool; a running stream is stalled by a compile only if
the compile keeps the engine thread from running Python. This compiles schemas on a thread over a
synthetic 152k-token vocabulary while the main thread loops, and prints one compile's time and the
longest gap between two iterations of the main thread's loop (CPU only, no model):
  python perf/xgrammar_gil.py
"""
from __future__ import annotations

import json
import random
import threading
import time

import xgrammar as xgr

VOCAB = 151_936


def schema(tag: str) -> str:
    kinds = ["integer", "string", "boolean"]
    return json.dumps({"type": "object", "required": [f"{tag}{k}" for k in range(8)],
                       "properties": {f"{tag}{k}": {"type": kinds[k % 3]} for k in range(8)}})


def main() -> None:
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz" * 2 + " ABCDEFG0123456789{}[]\":,"
    words = {"".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(VOCAB + 10_000)}
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo(sorted(words)[: VOCAB - 1], vocab_size=VOCAB, stop_token_ids=[0]),
                                   max_threads=1, cache_enabled=False)
    start = time.perf_counter()
    compiler.compile_json_schema(schema("warm"))
    print(f"one schema compiled in {(time.perf_counter() - start) * 1e3:.1f} ms")
    done = threading.Event()

    def compile_five() -> None:
        for j in range(5):
            compiler.compile_json_schema(schema(f"s{j}_"))
        done.set()

    worker = threading.Thread(target=compile_five)
    gaps, last = [], time.perf_counter()
    worker.start()
    while not done.is_set():
        sum(range(1000))
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    worker.join()
    print(f"main thread while 5 schemas compiled: {len(gaps)} iterations, longest gap {max(gaps) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()

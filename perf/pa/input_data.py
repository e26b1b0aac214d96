"""Write a perf_analyzer --input-data JSON whose prompts have exact token lengths.

Each entry sends `input_ids` (random ids below the vocabulary size, so lengths are exact rather
than whatever a tokenizer makes of text), `max_tokens` and `ignore_eos` (so every request makes
exactly max_tokens tokens) and `stream`.

    python perf/pa/input_data.py --model-dir demo_model --lengths 32,128 --max-tokens 16 --out data.json
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def vocab_size(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])


def input_data(lengths: list[int], max_tokens: int, vocab: int, per_length: int, seed: int,
               stream: bool = True) -> dict:
    """perf_analyzer's input-data document: one data entry per prompt."""
    rng = random.Random(seed)
    entries = []
    for length in lengths:
        for _ in range(per_length):
            entries.append({
                "input_ids": {"content": [rng.randrange(vocab) for _ in range(length)], "shape": [length]},
                "max_tokens": [max_tokens],
                "ignore_eos": [True],
                "stream": [stream],
            })
    return {"data": entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="HF model directory (for vocab_size)")
    parser.add_argument("--lengths", default="128", help="comma-separated prompt lengths in tokens")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--per-length", type=int, default=4, help="prompts per length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    doc = input_data(lengths, args.max_tokens, vocab_size(args.model_dir), args.per_length, args.seed)
    args.out.write_text(json.dumps(doc))


if __name__ == "__main__":
    main()

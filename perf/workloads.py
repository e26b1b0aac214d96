"""Serving workloads as perf_analyzer `--input-data` documents.

A workload is a list of (prompt tokens, output tokens) pairs; every request carries `max_tokens`
and `ignore_eos` so it makes exactly its output length, and prompts are sent either as exact
`input_ids` (token-exact lengths, no tokenizer needed) or as `text_input` (through the server's
tokenizer; lengths are then approximate).

Length sources (all seeded, so a workload is reproducible from its spec):
  sharegpt  rows drawn with replacement from a ShareGPT length trace (CSV with columns
            num_prefill_tokens, num_decode_tokens), e.g. perf/traces/sharegpt_8k_lengths.csv.
  arxiv     arXiv-summarization-like long prompts: prompt = exp(N(ln 8192, 0.35)) clipped to
            [2048, 16384] (98% fall in 4k-16k, 2% at 16384; median 8192, mean 8660); output
            uniform in [200, 300].
Then `scale` multiplies both lengths (CPU smoke runs use e.g. 0.02), `max_output_tokens` caps
outputs, and prompt + output is clipped to the model's max_model_len (the prompt is shortened).

    python perf/workloads.py --kind arxiv --requests 16 --model-dir demo_model --scale 0.05 --out a.json
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "pa"))
from input_data import vocab_size  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "backend_src" / "laminar" / "demo" / "corpus.txt"
ARXIV_MEDIAN, ARXIV_SIGMA, ARXIV_PROMPT_RANGE, ARXIV_OUTPUT_RANGE = 8192, 0.35, (2048, 16384), (200, 300)


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload entry of a sweep config."""

    name: str
    kind: str                      # "sharegpt" or "arxiv"
    requests: int
    seed: int = 0
    scale: float = 1.0
    max_output_tokens: int | None = None
    trace: str = "perf/traces/sharegpt_8k_lengths.csv"
    prompt_format: str = "ids"     # "ids" (input_ids) or "text" (text_input)


def sharegpt_lengths(trace: Path, n: int, rng: random.Random) -> list[tuple[int, int]]:
    with trace.open() as f:
        rows = [(int(r["num_prefill_tokens"]), int(r["num_decode_tokens"])) for r in csv.DictReader(f)]
    return [rng.choice(rows) for _ in range(n)]


def arxiv_lengths(n: int, rng: random.Random) -> list[tuple[int, int]]:
    lo, hi = ARXIV_PROMPT_RANGE
    prompts = [min(hi, max(lo, round(math.exp(rng.gauss(math.log(ARXIV_MEDIAN), ARXIV_SIGMA))))) for _ in range(n)]
    return [(p, rng.randint(*ARXIV_OUTPUT_RANGE)) for p in prompts]


def shape_lengths(pairs: list[tuple[int, int]], scale: float, max_output: int | None,
                  max_model_len: int) -> list[tuple[int, int]]:
    """Scale, cap outputs, then shorten prompts so prompt + output fits max_model_len."""
    out = []
    for prompt, output in pairs:
        prompt, output = max(1, round(prompt * scale)), max(1, round(output * scale))
        output = min(output, max_output or output, max_model_len - 1)
        out.append((min(prompt, max_model_len - output), output))
    return out


def lengths_for(spec: WorkloadSpec, max_model_len: int) -> list[tuple[int, int]]:
    rng = random.Random(spec.seed)
    if spec.kind == "sharegpt":
        pairs = sharegpt_lengths(ROOT / spec.trace, spec.requests, rng)
    elif spec.kind == "arxiv":
        pairs = arxiv_lengths(spec.requests, rng)
    else:
        raise ValueError(f"unknown workload kind {spec.kind!r}")
    return shape_lengths(pairs, spec.scale, spec.max_output_tokens, max_model_len)


def text_prompt(token_ids: list[int], length: int, rng: random.Random, decode) -> str:
    """A slice of the corpus about `length` tokens long, from a random offset (wrapping)."""
    start = rng.randrange(len(token_ids))
    ids = (token_ids * (1 + (start + length) // len(token_ids)))[start:start + length]
    return decode(ids)


def input_data(spec: WorkloadSpec, model_dir: Path, max_model_len: int) -> dict:
    """perf_analyzer's input-data document: one entry per request, in order."""
    rng = random.Random(spec.seed + 1)
    pairs = lengths_for(spec, max_model_len)
    if spec.prompt_format == "text":
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        corpus_ids = tok.encode(CORPUS.read_text()).ids
        prompts = [{"text_input": [text_prompt(corpus_ids, p, rng, tok.decode)]} for p, _ in pairs]
    elif spec.prompt_format == "ids":
        vocab = vocab_size(model_dir)
        prompts = [{"input_ids": {"content": [rng.randrange(vocab) for _ in range(p)], "shape": [p]}}
                   for p, _ in pairs]
    else:
        raise ValueError(f"unknown prompt_format {spec.prompt_format!r}")
    return {"data": [{**prompt, "max_tokens": [o], "ignore_eos": [True], "stream": [True]}
                     for prompt, (_, o) in zip(prompts, pairs)]}


def max_model_len(model_dir: Path, override: int | None = None) -> int:
    return override or int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["sharegpt", "arxiv"], required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--max-output-tokens", type=int)
    parser.add_argument("--prompt-format", choices=["ids", "text"], default="ids")
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args()
    spec = WorkloadSpec(a.kind, a.kind, a.requests, a.seed, a.scale, a.max_output_tokens, prompt_format=a.prompt_format)
    a.out.write_text(json.dumps(input_data(spec, a.model_dir, max_model_len(a.model_dir))))


if __name__ == "__main__":
    main()

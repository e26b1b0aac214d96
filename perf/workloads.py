"""Serving workloads as perf_analyzer `--input-data` documents: the one workload library of perf/
(the sweeps' workloads, and the fixed prompt lengths of run_perf_analyzer.py).

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

Shared-prefix kinds (token ids only; lengths uniform in the spec's ranges, times `scale`), for the
prefix cache:
  system-prompt  `prefixes` system prompts of `prefix_tokens` tokens, each request one of them
                 (uniformly) followed by a user message of `user_tokens` tokens.
  multi-turn     conversations of `turns` turns on one of the system prompts; each turn resends
                 the history (the previous prompt, then its answer as random tokens of the answer's
                 length: the client cannot know the model's reply when the data is written), then a
                 new user message. Turns go round-robin over the conversations, so a conversation's
                 next turn is sent about (number of conversations) / rate seconds after the last.
  The first request of either shares nothing: the sweep's warm-up sends it, and it must not
  warm the cache for the measured requests.

Fixed lengths (`fixed_length_data`): `per_length` prompts of each given length, random token ids.

    python perf/workloads.py --kind arxiv --requests 16 --model-dir demo_model --scale 0.05 --out a.json
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

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
    prefixes: int = 4                                # shared-prefix kinds: system prompts
    prefix_tokens: tuple[int, int] = (1024, 4096)   # their length range
    user_tokens: tuple[int, int] = (64, 512)        # a user message's length range
    output_tokens: tuple[int, int] = (32, 128)      # an answer's length range
    turns: int = 4                                   # multi-turn: turns per conversation


SHARED_PREFIX_KINDS = ("system-prompt", "multi-turn")


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


def shared_prefix_requests(spec: WorkloadSpec, vocab: int, max_model_len: int) -> list[tuple[list[int], int]]:
    """(prompt ids, output tokens) per request of a shared-prefix kind, in sending order."""
    rng = random.Random(spec.seed)

    def length(bounds: tuple[int, int]) -> int:
        return max(1, round(rng.randint(*bounds) * spec.scale))

    def ids(n: int) -> list[int]:
        return [rng.randrange(vocab) for _ in range(n)]

    def output() -> int:
        return min(length(spec.output_tokens), spec.max_output_tokens or max_model_len, max_model_len - 1)

    systems = [ids(length(spec.prefix_tokens)) for _ in range(spec.prefixes)] or [[]]
    requests = [(ids(length(spec.user_tokens)), output())]
    if spec.kind == "system-prompt":
        requests += [(rng.choice(systems) + ids(length(spec.user_tokens)), output()) for _ in range(spec.requests - 1)]
    else:
        histories = [rng.choice(systems) for _ in range(-(-(spec.requests - 1) // spec.turns))]
        for _turn in range(spec.turns):
            for c, history in enumerate(histories[: spec.requests - len(requests)]):
                prompt, out = history + ids(length(spec.user_tokens)), output()
                requests.append((prompt, out))
                histories[c] = prompt + ids(out)
    return [(prompt[: max_model_len - out], out) for prompt, out in requests]


def text_prompt(token_ids: list[int], length: int, rng: random.Random, decode) -> str:
    """A slice of the corpus about `length` tokens long, from a random offset (wrapping)."""
    start = rng.randrange(len(token_ids))
    ids = (token_ids * (1 + (start + length) // len(token_ids)))[start:start + length]
    return decode(ids)


def vocab_size(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])


def ids_prompt(ids: list[int]) -> dict:
    return {"input_ids": {"content": ids, "shape": [len(ids)]}}


def document(prompts: list[dict], outputs: list[int]) -> dict:
    """perf_analyzer's input-data document: one entry per request, each making exactly its
    output length (max_tokens with ignore_eos), streamed."""
    return {"data": [{**prompt, "max_tokens": [o], "ignore_eos": [True], "stream": [True]}
                     for prompt, o in zip(prompts, outputs)]}


def fixed_length_data(lengths: list[int], max_tokens: int, vocab: int, per_length: int, seed: int) -> dict:
    """`per_length` prompts of random token ids for each length, each making max_tokens tokens."""
    rng = random.Random(seed)
    prompts = [ids_prompt([rng.randrange(vocab) for _ in range(n)]) for n in lengths for _ in range(per_length)]
    return document(prompts, [max_tokens] * len(prompts))


def input_data(spec: WorkloadSpec, model_dir: Path, max_model_len: int) -> dict:
    """perf_analyzer's input-data document: one entry per request, in order."""
    rng = random.Random(spec.seed + 1)
    if spec.kind in SHARED_PREFIX_KINDS:
        if spec.prompt_format != "ids":
            raise ValueError(f"workload {spec.name}: {spec.kind} prompts are token ids (prompt_format ids)")
        requests = shared_prefix_requests(spec, vocab_size(model_dir), max_model_len)
        prompts = [ids_prompt(ids) for ids, _ in requests]
        pairs = [(len(ids), out) for ids, out in requests]
    elif spec.prompt_format == "text":
        pairs = lengths_for(spec, max_model_len)
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        corpus_ids = tok.encode(CORPUS.read_text()).ids
        prompts = [{"text_input": [text_prompt(corpus_ids, p, rng, tok.decode)]} for p, _ in pairs]
    elif spec.prompt_format == "ids":
        pairs = lengths_for(spec, max_model_len)
        vocab = vocab_size(model_dir)
        prompts = [ids_prompt([rng.randrange(vocab) for _ in range(p)]) for p, _ in pairs]
    else:
        raise ValueError(f"unknown prompt_format {spec.prompt_format!r}")
    return document(prompts, [o for _, o in pairs])


def max_model_len(model_dir: Path, override: int | None = None) -> int:
    return override or int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["sharegpt", "arxiv", *SHARED_PREFIX_KINDS], required=True)
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

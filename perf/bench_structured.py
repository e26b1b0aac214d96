"""What structured outputs cost the engine (issue 27's targets), on one engine:

1. decode step time with half of a 64-row decode batch under a JSON schema, against the same
   batch unconstrained (target: <= 1.05x). With dummy weights the experts a step reads depend on
   the sampled tokens, and constrained rows sample a narrow set, so the step ratio alone can flatter
   (0.60 on an H100): the mask's own cost is timed too. `mask_fill_ms` is the host fill of each
   timed step as the engine runs it (the executor's GrammarMask, timed in place: overlapped with
   the forward, on the path only where it outlasts it), median and max over the steps; the apply to
   the logits (on the critical path) is timed on the same rows' matchers, and `ratio_mask_on_path`
   adds it to the unconstrained step;
2. the max inter-token gap of running streams while 20 new, distinct JSON schemas arrive, against
   the median step, and again with the same schemas cached: `compile_stall_steps`, the difference,
   is what compiling adds (target: compiling never stalls the streams by more than one step).

A checkpoint without tokenizer.json (perf/models/*: config only, `--load-format dummy`) gets a
synthetic byte-level vocabulary of the model's size, so that the grammar's per-token work is that
of a real vocabulary's size. Run alone, or through `perf/bench_offline.py --structured`:
  python perf/bench_structured.py --model perf/models/qwen3-30b-a3b --load-format dummy
  python perf/bench_structured.py --model demo_model --batch 16 --steps 10      (CPU smoke run)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import laminar.executor
from laminar import EngineArgs, LLMEngine, SamplingParams
from laminar.structured_output import BitmaskBuffer, GrammarMask

# Never complete within a run: every row stays constrained while it is measured.
LONG_SCHEMA = {"type": "array", "minItems": 4000, "items": {"type": "object", "required": ["id", "tag"],
               "properties": {"id": {"type": "integer"}, "tag": {"type": "string", "maxLength": 8}}}}


def distinct_schema(j: int) -> dict:
    """The j-th of a series of JSON schemas that differ (so none is served from the grammar cache)."""
    kinds = ["integer", "string", "boolean"]
    return {"type": "object", "required": [f"field_{j}_{k}" for k in range(8)],
            "properties": {f"field_{j}_{k}": {"type": kinds[k % 3]} for k in range(8)}}


def with_tokenizer(model: str, scratch: Path) -> str:
    """model itself when it has a tokenizer, else a copy of its config with a synthetic one."""
    if (Path(model) / "tokenizer.json").is_file():
        return model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    config = json.loads((Path(model) / "config.json").read_text())
    alphabet = list(pre_tokenizers.ByteLevel.alphabet())
    rng, vocab = random.Random(0), {c: i for i, c in enumerate(sorted(alphabet))}
    letters = "abcdefghijklmnopqrstuvwxyz" * 2 + "ĠABCDEFG0123456789{}[]\":,"
    while len(vocab) < config["vocab_size"] - 1:
        vocab.setdefault("".join(rng.choices(letters, k=rng.randint(2, 9))), len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    out = scratch / "model"
    out.mkdir()
    shutil.copy(Path(model) / "config.json", out / "config.json")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": len(vocab) - 1}))
    return str(out)


def decode_steps(engine: LLMEngine, steps: int) -> list[float]:
    """Wall time between step() returns: what a stream sees between tokens. A step record's total_s
    ends before the call fills the grammar masks of the step it just launched, so no record holds
    that fill (it hid an 84 ms fill on an H100, perf/results/gpu-h100-2026-12-07-s7)."""
    times, last = [], time.perf_counter()
    for _ in range(steps):
        engine.step()
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def decode_cost(engine: LLMEngine, batch: int, steps: int, prompt: list[int]) -> dict:
    """Median decode step: `batch` unconstrained rows, then the same with half under LONG_SCHEMA;
    the host fill of each of the latter's timed steps, and the mask's apply."""
    result = {}
    for label, constrained in (("unconstrained", 0), ("half_json", batch // 2)):
        for i in range(batch):
            spec = {"json": LONG_SCHEMA} if i < constrained else None
            engine.add_request(f"{label}{i}", prompt, SamplingParams(max_tokens=100_000, ignore_eos=True, seed=i,
                                                                    structured_outputs=spec))
        while len(engine.scheduler.decoding) < batch:  # grammar compiled, prompts prefilled
            engine.step()
        decode_steps(engine, 3)
        with timed_fills() as fills:
            result[f"{label}_step_ms"] = statistics.median(decode_steps(engine, steps)) * 1e3
        if constrained:
            result["mask_fill_ms"] = statistics.median(fills) * 1e3
            result["mask_fill_max_ms"] = max(fills) * 1e3
            result["mask_fill_steps"] = len(fills)
            result.update(mask_apply(engine, [engine.seqs[f"{label}{i}"].grammar for i in range(batch)], steps))
        for i in range(batch):
            engine.abort(f"{label}{i}")
    result["ratio"] = result["half_json_step_ms"] / result["unconstrained_step_ms"]
    result["ratio_mask_on_path"] = 1 + result["mask_apply_ms"] / result["unconstrained_step_ms"]
    return result


@contextlib.contextmanager
def timed_fills() -> Iterator[list[float]]:
    """The wall time of every GrammarMask the executor builds meanwhile (the step's host fill, as
    the engine runs it: one a step, after the step's forward is launched) that has constrained rows."""
    fills: list[float] = []

    class TimedMask(GrammarMask):
        def __init__(self, *args, **kwargs) -> None:
            start = time.perf_counter()
            super().__init__(*args, **kwargs)
            if self.rows:
                fills.append(time.perf_counter() - start)

    laminar.executor.GrammarMask = TimedMask
    try:
        yield fills
    finally:
        laminar.executor.GrammarMask = GrammarMask


def mask_apply(engine: LLMEngine, grammars: list, repeats: int) -> dict:
    """Median device apply of one step's GrammarMask over these rows' matchers (None:
    unconstrained), on logits of the engine's vocabulary and device."""
    device = engine.executor.runner.device
    vocab = engine.model_config.vocab_size
    buffer = BitmaskBuffer(pinned=device.type == "cuda")
    logits = torch.randn(len(grammars), vocab, device=device, dtype=torch.float32)
    mask = GrammarMask(grammars, vocab, buffer)
    apply = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        mask.apply(logits)
        _sync(device)
        apply.append(time.perf_counter() - start)
    return {"mask_apply_ms": statistics.median(apply) * 1e3}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compile_stall(engine: LLMEngine, streams: int, schemas: int, prompt: list[int]) -> dict:
    """Inter-token gaps of `streams` running requests while `schemas` distinct JSON schemas arrive,
    one a step; then the same schemas again (compiled and cached), so that the difference is the
    compiling alone (the new requests' short prefills are in both)."""
    for i in range(streams):
        engine.add_request(f"s{i}", prompt, SamplingParams(max_tokens=100_000, ignore_eos=True))
    while len(engine.scheduler.decoding) < streams:
        engine.step()
    median = statistics.median(decode_steps(engine, 10))
    report = {"median_step_ms": median * 1e3}
    for phase in ("new", "cached"):
        gaps = _gaps_while_arriving(engine, schemas, phase, prompt[:8])
        report[f"{phase}_max_gap_ms"] = max(gaps) * 1e3
        report[f"{phase}_max_gap_steps"] = max(gaps) / median
    # The target's figure: what compiling adds to the longest gap (the prefills are in both phases).
    report["compile_stall_steps"] = report["new_max_gap_steps"] - report["cached_max_gap_steps"]
    for rid in list(engine.seqs):
        engine.abort(rid)
    return report


def _gaps_while_arriving(engine: LLMEngine, schemas: int, phase: str, prompt: list[int]) -> list[float]:
    gaps, last = [], time.perf_counter()
    for j in range(schemas + 10):
        if j < schemas:
            engine.add_request(f"{phase}{j}", prompt,
                               SamplingParams(max_tokens=16, structured_outputs={"json": distinct_schema(j)}))
        if any(o.request_id == "s0" for o in engine.step()):
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    return gaps


def run(model: str, load_format: str, batch: int, steps: int, device: str | None) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = with_tokenizer(model, Path(scratch))
        args = dict(model=model_dir, load_format=load_format, max_num_seqs=max(batch, 32))
        if device:
            args["device"] = device
        engine = LLMEngine(EngineArgs.from_dict(args))
        prompt = [random.Random(1).randrange(100, 1000) for _ in range(128)]
        try:
            report = {"decode": decode_cost(engine, batch, steps, prompt),
                      "compile_stall": compile_stall(engine, min(batch, 8), 20, prompt)}
        finally:
            engine.shutdown()
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() and device != "cpu" else "cpu"
    return {"command": "python " + " ".join(sys.argv), "device": device_name, **report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--load-format", default="safetensors")
    ap.add_argument("--device")
    ap.add_argument("--batch", type=int, default=64, help="decode rows; half of them under a JSON schema")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", help="write the JSON report here")
    args = ap.parse_args()
    report = run(args.model, args.load_format, args.batch, args.steps, args.device)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

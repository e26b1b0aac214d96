"""Helpers for engine tests: building engines on tiny checkpoints and recording what they compute."""
from __future__ import annotations

import random

import torch

from laminar import EngineArgs, LLMEngine, SamplingParams


def make_engine(model_dir, **overrides) -> LLMEngine:
    args = dict(model=str(model_dir), device="cpu", dtype="float32", block_size=4, num_kv_blocks=512,
                max_num_batched_tokens=64, max_num_seqs=32)
    if overrides.get("prefill_policy", "static") == "static":
        args["num_stages"] = 4
    args.update(overrides)
    return LLMEngine(EngineArgs(**args))


class LogitsRecorder:
    """Wraps the engine's sampler to keep the logits each request was sampled from."""

    def __init__(self, engine: LLMEngine) -> None:
        self.inner = engine.executor.sampler
        self.engine = engine
        self.logits: dict[int, list[torch.Tensor]] = {}
        engine.executor.sampler = self

    def __call__(self, logits, params, generators, *histories):
        for row, p in zip(logits, params):
            self.logits.setdefault(id(p), []).append(row.clone())
        return self.inner(logits, params, generators, *histories)


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def random_arrivals(seed: int, count: int, tokens: range, max_prompt: int, last_step: int,
                    max_tokens: int) -> dict[int, list[tuple[str, list[int], SamplingParams]]]:
    """count greedy requests: prompts of 1..max_prompt ids drawn from `tokens`, arriving at steps
    0..last_step, generating 1..max_tokens tokens each (the draws in that order, per request)."""
    rng = random.Random(seed)
    arrivals: dict[int, list] = {}
    for i in range(count):
        prompt = [rng.randrange(tokens.start, tokens.stop) for _ in range(rng.randint(1, max_prompt))]
        arrivals.setdefault(rng.randint(0, last_step), []).append((f"r{i}", prompt, greedy(rng.randint(1, max_tokens))))
    return arrivals


def run_to_completion(engine: LLMEngine, arrivals: dict[int, list[tuple[str, list[int], SamplingParams]]],
                      on_step=None, on_output=None) -> dict[str, list[int]]:
    """Adds requests at the given iteration numbers and steps until all finish; returns output ids.
    on_step(iteration, engine) runs after every step, on_output(RequestOutput) for every output."""
    outputs: dict[str, list[int]] = {}
    it = 0
    while engine.has_unfinished_requests() or any(k >= it for k in arrivals):
        for rid, prompt, params in arrivals.get(it, []):
            engine.add_request(rid, prompt, params)
            outputs[rid] = []
        for out in engine.step():
            outputs[out.request_id].extend(out.new_token_ids)
            if on_output:
                on_output(out)
        if on_step:
            on_step(it, engine)
        it += 1
        assert it < 10_000, "engine did not finish"
    return outputs

"""Offline generation with a vLLM-like interface: LLM(model=...).generate(prompts, params)."""
from __future__ import annotations

from laminar.config import EngineArgs
from laminar.engine import LLMEngine
from laminar.outputs import CompletionOutput
from laminar.sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str, **engine_args) -> None:
        self.engine = LLMEngine(EngineArgs.from_dict({"model": model, **engine_args}))

    def generate(
        self,
        prompts: str | list[int] | list[str | list[int]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[CompletionOutput]:
        """Runs prompts to completion; one output per prompt, in order (n must be 1: LLMEngine streams
        the samples of n > 1 requests). A grammar that does not compile raises ValueError."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        if any(p.n != 1 for p in params):
            raise ValueError("LLM.generate returns one completion per prompt: n must be 1")
        base = self.engine.stats.iterations
        ids = [f"generate-{base}-{i}" for i in range(len(prompts))]
        results: dict[str, CompletionOutput] = {}
        try:
            for rid, prompt, p in zip(ids, prompts, params):
                self.engine.add_request(rid, prompt, p)
                seq = self.engine.seqs[rid]
                results[rid] = CompletionOutput(rid, list(seq.prompt_token_ids), [], "", None)
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.error is not None:
                        raise ValueError(out.error)
                    done = results[out.request_id]
                    done.token_ids.extend(out.new_token_ids)
                    done.text += out.new_text
                    done.finish_reason = out.finish_reason
                    done.num_cached_tokens = out.num_cached_tokens
                    if out.logprobs is not None:
                        done.logprobs = (done.logprobs or []) + out.logprobs
        finally:
            for rid in ids:
                self.engine.abort(rid)
        return [results[rid] for rid in ids]

"""The start-up profile the cost model learns from: synthetic steps timed on the engine's device.

Decode-only steps by batch size (at a short and a long context), mixed steps by row count
(prompts cut into PROFILE_SEQ_TOKENS-long sequences), and one long prompt and one chunk at a
long context for the two prefill attention slopes; cost_model.Profile holds the results. Each
synthetic step is built and sent as a real one is (workers included), so the times are the
engine's own.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from laminar.config import EngineArgs
from laminar.cost_model import PROFILE_SEQ_TOKENS, Profile
from laminar.model_runner import ModelRunner
from laminar.step_inputs import SegmentInputs, StepInputs
from laminar.worker_group import WorkerGroup

PROFILE_DECODE_CONTEXT = (16, 2048)  # short and long context of the profiled decode steps
PROFILE_REPEATS = 3


class Profiler:
    """Times synthetic steps on rank 0's runner (and the workers, which run every step with it)."""

    def __init__(self, runner: ModelRunner, workers: WorkerGroup | None, args: EngineArgs, max_model_len: int) -> None:
        self.runner, self.workers, self.args, self.max_model_len = runner, workers, args, max_model_len
        self.cfg = runner.cfg
        self.measured: Profile | None = None

    @torch.inference_mode()
    def profile(self) -> Profile:
        """Times synthetic steps on this device for the cost model (cached: engines sharing the
        executor share it). Writes only to the still unused cache; blocks wrap around the pool."""
        if self.measured is not None:
            return self.measured
        layers, rows = self.cfg.num_layers, self.args.max_step_rows
        batches = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < self.args.max_num_seqs] + [self.args.max_num_seqs]
        short, long = PROFILE_DECODE_CONTEXT[0], min(PROFILE_DECODE_CONTEXT[1], self.max_model_len - 1)
        decode_s = [self._time(self._synthetic([short] * b, [1] * b)) / layers for b in batches]
        sizes = sorted({n for n in (1 << k for k in range(4, rows.bit_length())) if n < rows} | {rows})
        mixed_s = [self._time(self._synthetic(*_short_prompts(n))) / layers for n in sizes]
        b = min(64, self.args.max_num_seqs)
        extra = self._time(self._synthetic([long] * b, [1] * b)) - decode_s[batches.index(b)] * layers  # b is a rung
        context_s = max(extra, 0.0) / (layers * b * (long - short))
        # Prefill attention beyond the profiled short prompts: one long prompt against the same
        # tokens as short prompts (pairs within a chunk), and one chunk at a long context against
        # the same chunk alone (pairs with earlier tokens); kernels spend differently on the two.
        n = min(4096, rows, self.max_model_len - 1)
        as_short = mixed_s[sizes.index(n)] * layers if n in sizes else self._time(self._synthetic(*_short_prompts(n)))
        extra = self.time_prompt(n) - as_short
        pairs = n * (n + 1) / 2 - n * (PROFILE_SEQ_TOKENS + 1) / 2
        self_pair_s = max(extra, 0.0) / (layers * pairs) if pairs > 0 else 0.0
        q = min(512, rows)
        context = min(4096, self.max_model_len - 1 - q)
        extra = self._time(self._synthetic([q + context], [q])) - self.time_prompt(q)
        context_pair_s = max(extra, 0.0) / (layers * q * context) if context > 0 else 0.0
        self.measured = Profile(layers, tuple(batches), tuple(decode_s), tuple(sizes), tuple(mixed_s),
                                context_s, self_pair_s, context_pair_s)
        return self.measured

    def time_prompt(self, tokens: int) -> float:
        """Seconds of one pass of a prompt of this many tokens through every layer (nothing else in the step)."""
        return self._time(self._synthetic([tokens], [tokens]))

    def _synthetic(self, seq_lens: list[int], q_lens: list[int]) -> StepInputs:
        """A step of sequences with these lengths computing their last q_lens tokens: decodes
        (q_len 1), or one prefill segment across all layers."""
        bs, num_blocks, tables, next_block = self.runner.block_size, self.runner.num_blocks, [], 0
        for n in seq_lens:
            width = -(-n // bs)
            tables.append([(next_block + j) % num_blocks for j in range(width)])
            next_block += width
        decode = all(q == 1 for q in q_lens)
        rows = sum(q_lens)
        segments = [] if decode else [SegmentInputs(-1, len(seq_lens), range(self.cfg.num_layers), None)]
        # Distinct tokens, so that rows route to experts as real traffic does (equal rows would all
        # pick the same top-k experts and hide most of the MoE's weight reads).
        tokens = np.random.default_rng(rows).integers(0, self.cfg.vocab_size, rows).tolist()
        return StepInputs(
            token_ids=tokens, starts=[n - q for n, q in zip(seq_lens, q_lens)], q_lens=q_lens,
            block_tables=tables, num_decode=len(seq_lens) if decode else 0, segments=segments, carried=[],
            logits_rows=list(range(rows)) if decode else [rows - 1],
        )

    def _time(self, inputs: StepInputs) -> float:
        """Median wall time of the forward (inputs built and sent as in a real step)."""
        times = []
        for _ in range(PROFILE_REPEATS + 1):
            self.runner.synchronize()
            start = time.perf_counter()
            if self.workers is not None:
                self.workers.send(inputs)
            self.runner.run(self.runner.build_batch(inputs), [])
            self.runner.synchronize()
            times.append(time.perf_counter() - start)
        self.runner.expert_hits.zero_()
        return sorted(times[1:])[len(times[1:]) // 2]


def _short_prompts(tokens: int) -> tuple[list[int], list[int]]:
    """Sequence and query lengths of `tokens` prompt tokens cut into PROFILE_SEQ_TOKENS-long prompts."""
    full, rest = divmod(tokens, PROFILE_SEQ_TOKENS)
    lens = [PROFILE_SEQ_TOKENS] * full + ([rest] if rest else [])
    return lens, lens

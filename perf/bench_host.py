"""Host time to turn one scheduler plan into device tensors (plan_inputs + build_batch).

This is the per-step CPU work between scheduling and the forward pass, the part of the host
overhead that grows with batch size and context. Sequences are synthetic (Qwen3-30B-A3B-like
step: 64 decodes at 2k context, optionally with an 8k prompt's first layer group); the model is
the demo checkpoint on the CPU, whose size does not enter these timings.

    python perf/bench_host.py --model demo_model
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from laminar.config import EngineArgs, ModelConfig
from laminar.distributed import TensorParallel
from laminar.executor import plan_inputs
from laminar.model_runner import ModelRunner
from laminar.sampling_params import SamplingParams
from laminar.sequence import Sequence
from laminar.step_plan import Chunk, Segment, StepPlan


def synthetic_plan(decodes: int, context: int, prompt: int, block_size: int, vocab: int) -> StepPlan:
    rng = random.Random(0)
    next_block = 0

    def seq(name: str, tokens: int, computed: int) -> Sequence:
        nonlocal next_block
        s = Sequence(name, [rng.randrange(vocab) for _ in range(tokens)], SamplingParams(), None, None, 0.0)
        s.num_computed = computed
        blocks = -(-tokens // block_size)
        s.block_table = list(range(next_block, next_block + blocks))
        next_block += blocks
        return s

    decode = [seq(f"d{i}", context, context - 1) for i in range(decodes)]
    segments = ()
    if prompt:
        segments = (Segment(0, (Chunk(seq("p", prompt, 0), 0, prompt),), range(3), None, False),)
    return StepPlan(tuple(decode), segments, carried=(0,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo_model")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    cfg = ModelConfig.from_dir(args.model)
    engine_args = EngineArgs(model=args.model, device="cpu", num_kv_blocks=16, block_size=16)
    runner = ModelRunner(cfg, engine_args, cfg.max_position_embeddings, TensorParallel())
    for label, prompt in (("64 decodes @ 2k", 0), ("64 decodes @ 2k + 8k prompt, group 0", 8192)):
        plan = synthetic_plan(64, 2048, prompt, engine_args.block_size, cfg.vocab_size)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            runner.build_batch(plan_inputs(plan))
            times.append(time.perf_counter() - start)
        print(f"{label}: median {1e3 * statistics.median(times):.2f} ms over {args.repeats}")


if __name__ == "__main__":
    main()

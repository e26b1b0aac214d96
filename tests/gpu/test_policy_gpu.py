"""On CUDA: the SLO policy (graphs on, several batches per step) and the sampler's penalties and
logprobs give the CPU reference's results (device only)."""
from __future__ import annotations

import pytest
import torch
from engine_utils import run_to_completion
from test_engine_gpu import demo, workload  # noqa: F401  (demo is a fixture)

from laminar import EngineArgs, LLMEngine, SamplingParams
from laminar.cost_model import CostModel, Profile

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# A fixed profile and the open-loop step target (slo_control "fixed": the tail controller steers on
# measured times, which differ between devices), so that both devices choose the same spans. The
# profile is for 6 layers: the demo model's 4 cost two thirds of each figure.
PROFILE = Profile(num_layers=6, decode_rows=(1, 32), decode_s=(1e-3, 2e-3), mixed_rows=(16, 512),
                  mixed_s=(4e-3, 12e-3), context_s=1e-7, self_pair_s=1e-9, context_pair_s=2e-9)


def engine(model, device: str, **overrides) -> LLMEngine:
    args = dict(model=str(model), device=device, dtype="float32", block_size=16, num_kv_blocks=256,
                max_num_batched_tokens=256, max_num_seqs=12)
    args.update(overrides)
    return LLMEngine(EngineArgs(**args), cost=CostModel(PROFILE, learn=False))


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_slo_policy_gpu_matches_cpu(demo, mode):  # noqa: F811
    spans = []
    record = lambda it, e: e.last_step and spans.append(len(e.last_step.segments))  # noqa: E731
    # 40 ms: one batch finishes and the next starts in one step (checked on the CPU; 30 ms gives none).
    slo = dict(schedule_mode=mode, prefill_policy="slo", tbt_slo_ms=40, max_num_batched_tokens=512, slo_control="fixed")
    cpu = run_to_completion(engine(demo, "cpu", **slo), workload())
    gpu = run_to_completion(engine(demo, "cuda", **slo), workload(), on_step=record)
    assert gpu == cpu
    if mode == "layered":
        assert max(spans) == 2, "a step ran two batches"


def test_penalties_and_logprobs_gpu_match_cpu(demo):  # noqa: F811
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, presence_penalty=0.5,
                            frequency_penalty=0.3, repetition_penalty=1.3, logprobs=3)
    results = {}
    for device in ("cpu", "cuda"):
        e = engine(demo, device)
        e.add_request("p", list(range(5, 60)), params)
        outs = []
        while e.has_unfinished_requests():
            outs += e.step()
        results[device] = outs
    assert [o.new_token_ids for o in results["cuda"]] == [o.new_token_ids for o in results["cpu"]]
    for g, c in zip(results["cuda"], results["cpu"]):
        assert g.logprobs[0].logprob == pytest.approx(c.logprobs[0].logprob, abs=1e-3)

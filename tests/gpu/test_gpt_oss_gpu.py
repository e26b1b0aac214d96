"""Tiny GPT-OSS on CUDA (Triton kernels: sinks and windows in attention, MXFP4 in the fused MoE) gives the CPU's tokens."""
from __future__ import annotations

import pytest
import torch
from engine_utils import greedy, make_engine, random_arrivals, run_to_completion

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ARGS = dict(num_stages=3, group_token_thresholds=(), max_num_batched_tokens=64, max_num_seqs=12, block_size=16,
            num_kv_blocks=128, max_model_len=512)


def workload() -> dict[int, list]:
    """Prompts up to 90 tokens, far past the fixture's 8-token windows."""
    return random_arrivals(7, 10, range(1, 257), max_prompt=90, last_step=6, max_tokens=12)


def run(model_dir, **overrides) -> dict[str, list[int]]:
    return run_to_completion(make_engine(model_dir, **{**ARGS, **overrides}), workload())


@pytest.mark.parametrize("fmt", ["mxfp4", "bf16"])
@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_gpu_fp32_matches_cpu(gpt_oss_checkpoints, fmt, mode):
    model = gpt_oss_checkpoints[fmt]
    cpu = run(model, device="cpu", dtype="float32", schedule_mode=mode)
    assert run(model, device="cuda", dtype="float32", schedule_mode=mode) == cpu


def test_packed_experts_match_dequantized_on_gpu(gpt_oss_mxfp4):
    """MXFP4 decoded inside the fused MoE == experts dequantized at load, on the device."""
    packed = run(gpt_oss_mxfp4, device="cuda", dtype="float32")
    assert run(gpt_oss_mxfp4, device="cuda", dtype="float32", dequantize_experts=True) == packed


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_cuda_graphs_match_eager(gpt_oss_mxfp4, mode):
    args = dict(device="cuda", dtype="float32", schedule_mode=mode)
    eager_engine = make_engine(gpt_oss_mxfp4, enforce_eager=True, **ARGS, **args)
    graph_engine = make_engine(gpt_oss_mxfp4, **ARGS, **args)
    assert graph_engine.executor.runner.layers.decode is not None
    assert run_to_completion(graph_engine, workload()) == run_to_completion(eager_engine, workload())
    assert graph_engine.get_stats().expert_bytes_total == eager_engine.get_stats().expert_bytes_total


def test_gpu_bf16_agrees_mostly(gpt_oss_mxfp4):
    """bf16 rounding may flip a near-tie, so compare first tokens only."""
    cpu = run(gpt_oss_mxfp4, device="cpu", dtype="float32")
    gpu = run(gpt_oss_mxfp4, device="cuda", dtype="bfloat16")
    assert sum(cpu[r][0] == gpu[r][0] for r in cpu) >= 0.8 * len(cpu)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_prefill_write_out_matches_dequantized_experts(gpt_oss_mxfp4, mode):
    """Steps past the MXFP4 write-out threshold (kernels.moe_mxfp4: 384 rows an expert, 768 tokens
    with the fixture's 8 experts, top-4) run the 16-bit kernel over the experts written out for the
    step: the tokens of experts dequantized at load, and of the packed GEMM in smaller steps."""
    from laminar_kernels.moe_mxfp4 import mxfp4_config

    rng = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 257, (400,), generator=rng).tolist() for _ in range(4)]
    arrivals = {0: [(f"r{i}", p, greedy(6)) for i, p in enumerate(prompts)]}
    assert mxfp4_config(1600, 4, 8, 64, 64, torch.float32, torch.device("cuda")) == {"DEQUANT": True}
    args = dict(ARGS, device="cuda", dtype="float32", schedule_mode=mode, max_num_batched_tokens=2048,
                num_kv_blocks=160)
    written_out = run_to_completion(make_engine(gpt_oss_mxfp4, **args), arrivals)
    assert run_to_completion(make_engine(gpt_oss_mxfp4, **args, dequantize_experts=True), arrivals) == written_out
    assert run_to_completion(make_engine(gpt_oss_mxfp4, **{**args, "max_num_batched_tokens": 256}), arrivals) == written_out

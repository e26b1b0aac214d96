"""Shared fixtures: tiny random HF checkpoints written with transformers itself."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (the GPU sessions run -n 4 or more) each worker gets its share of the
    cores for torch's CPU threads: every worker taking all of them made the fp32 CPU references of
    tests/gpu crawl (16 cores, 8 workers x 16 threads: several tests past 200 s on an H100 host)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def write_hf_checkpoint(out: Path, moe: bool = True, num_layers: int = 3, seed: int = 0, **overrides) -> Path:
    """Saves a random Qwen3-MoE (or dense Qwen3) model with transformers' own save_pretrained."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    common = dict(
        vocab_size=257, hidden_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=96, max_position_embeddings=512,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, eos_token_id=0,
    )
    if moe:
        common.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[])
    common.update(overrides)
    torch.manual_seed(seed)
    config = (Qwen3MoeConfig if moe else Qwen3Config)(**common)
    model = (Qwen3MoeForCausalLM if moe else Qwen3ForCausalLM)(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than HF's init so that routing and logits are decisive
            p.normal_(0.0, 0.15)
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    """The demo checkpoint's architecture and BPE tokenizer with random weights, written for the tests.

    Not the trained demo_model/ that build.sh serves: a model that has learnt its corpus repeats
    it, so sampling at temperature 1.0 would not explore (grammars would not be driven to their
    ends, seeds would not change the output); tests/test_demo_checkpoint.py tests the trained one.
    """
    out = tmp_path_factory.mktemp("demo") / "demo_model"
    subprocess.run([sys.executable, "-m", "laminar.demo", "--out", str(out), "--random"], check=True)
    return out


@pytest.fixture(scope="session")
def moe_checkpoint(tmp_path_factory) -> Path:
    return write_hf_checkpoint(tmp_path_factory.mktemp("moe3"), moe=True, num_layers=3)


@pytest.fixture(scope="session")
def moe_checkpoint_5(tmp_path_factory) -> Path:
    return write_hf_checkpoint(tmp_path_factory.mktemp("moe5"), moe=True, num_layers=5, seed=1)


@pytest.fixture(scope="session")
def dense_checkpoint(tmp_path_factory) -> Path:
    return write_hf_checkpoint(tmp_path_factory.mktemp("dense"), moe=False, num_layers=3, seed=2)


@pytest.fixture(scope="session")
def tied_checkpoint(tmp_path_factory) -> Path:
    """Dense, the LM head tied to the embedding."""
    return write_hf_checkpoint(tmp_path_factory.mktemp("tied"), moe=False, num_layers=3, seed=4, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def gpt_oss_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny GPT-OSS in both formats: {"mxfp4": the release's layout, "bf16": plain}."""
    from gpt_oss_checkpoint import write_gpt_oss_checkpoints

    return write_gpt_oss_checkpoints(tmp_path_factory.mktemp("gpt_oss"))


@pytest.fixture(scope="session")
def gpt_oss_mxfp4(gpt_oss_checkpoints) -> Path:
    return gpt_oss_checkpoints["mxfp4"]


@pytest.fixture(scope="session")
def gpt_oss_bf16(gpt_oss_checkpoints) -> Path:
    return gpt_oss_checkpoints["bf16"]

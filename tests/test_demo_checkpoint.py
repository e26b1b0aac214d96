"""The demo checkpoint: deterministic bytes, clean HF loading, working tokenizer (on the random
checkpoint these tests write for themselves), and the trained one speaking corpus-like text."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from laminar import LLM, SamplingParams
from laminar.demo import write_demo_checkpoint
from laminar.demo.checkpoint import CORPUS, FILES, STAMP, is_complete

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "model", trained=False)


def test_two_writes_are_byte_identical(demo_dir: Path, tmp_path: Path) -> None:
    """The second write runs in a fresh process with another hash seed and thread count."""
    other = tmp_path / "again"
    env = {"PYTHONPATH": str(REPO / "backend_src"), "PYTHONHASHSEED": "123",
           "RAYON_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "laminar.demo", "--out", str(other), "--random"],
                   check=True, env=env, capture_output=True)
    for name in (*FILES, STAMP):
        assert (demo_dir / name).read_bytes() == (other / name).read_bytes(), name


def test_rewrite_skips_complete_and_repairs_damaged(demo_dir: Path, tmp_path: Path) -> None:
    out = write_demo_checkpoint(tmp_path / "m", trained=False)
    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    write_demo_checkpoint(out, trained=False)
    assert weights.stat().st_mtime_ns == mtime
    (out / "config.json").write_text("{}")
    write_demo_checkpoint(out, trained=False)
    assert (out / "config.json").read_bytes() == (demo_dir / "config.json").read_bytes()


def test_refuses_foreign_directory_without_force(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="pytorch_model.bin"):
        write_demo_checkpoint(tmp_path, trained=False)
    assert (write_demo_checkpoint(tmp_path, force=True, trained=False) / STAMP).is_file()


def test_config_and_tensor_names(demo_dir: Path) -> None:
    cfg = json.loads((demo_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3MoeForCausalLM"] and cfg["model_type"] == "qwen3_moe"
    assert cfg["vocab_size"] == 2048 and cfg["num_experts"] == 8 and cfg["head_dim"] == 32
    with safe_open(str(demo_dir / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.gate.weight").shape == (8, 128)
        assert f.get_tensor("model.layers.3.mlp.experts.7.down_proj.weight").shape == (128, 256)
        assert f.get_tensor("model.layers.0.self_attn.k_proj.weight").shape == (64, 128)
        assert torch.all(f.get_tensor("model.norm.weight") == 1)
        std = f.get_tensor("lm_head.weight").std().item()
        assert abs(std - 0.02) < 0.001
    per_layer = 2 + 4 + 2 + 1 + 8 * 3
    assert len(names) == 3 + 4 * per_layer
    assert "model.layers.3.mlp.experts.7.gate_proj.weight" in names


def test_transformers_loads_cleanly(demo_dir: Path) -> None:
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        demo_dir, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    assert model.config.model_type == "qwen3_moe"
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, 2048) and torch.isfinite(logits).all()


def test_transformers_tokenizer_round_trips(demo_dir: Path) -> None:
    text = "Layered prefill spreads a prompt over steps. café 你好 🚀"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(demo_dir / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(demo_dir)
    assert fast.decode(fast.encode(text)) == text
    assert auto.decode(auto.encode(text)) == text
    assert auto.eos_token == "<|im_end|>"
    prompt = auto.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def corpus_shares(text: str) -> tuple[float, float]:
    """The share of the text's words that are words of the corpus, and of its consecutive word
    pairs that also follow each other there."""
    corpus = words(CORPUS.read_text())
    known, pairs = set(zip(corpus, corpus[1:])), list(zip(words(text), words(text)[1:]))
    return (sum(w in set(corpus) for w in words(text)) / max(1, len(words(text))),
            sum(p in known for p in pairs) / max(1, len(pairs)))


def greedy_texts(model: Path, prompts: list[str]) -> list[str]:
    llm = LLM(model=str(model), device="cpu")
    return [out.text for out in llm.generate(prompts, SamplingParams(max_tokens=48, temperature=0.0))]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint build.sh trained into demo_model/ when it is current, else a fresh one."""
    shipped = REPO / "demo_model"
    if is_complete(shipped, trained=True):
        return shipped
    return write_demo_checkpoint(tmp_path_factory.mktemp("trained") / "model")


def test_trained_model_speaks_the_corpus(trained_dir: Path, demo_dir: Path) -> None:
    """Through the engine, the trained model continues every prompt with English words of the corpus,
    mostly in pairs the corpus has; the random one's tokens are corpus subwords too, in no order.

    The pairs are judged over five prompts together: training is reproducible on one CPU model
    only, and on another one prompt's continuation may run into a loop ("A request arrives": 0.4
    of its pairs in the corpus on the CI machine of 2026-12-07)."""
    prompts = ["The scheduler runs", "A request arrives", "The engine", "Layered prefill", "Each step"]
    texts = greedy_texts(trained_dir, prompts)
    for text in texts:
        assert len(words(text)) >= 12 and corpus_shares(text)[0] >= 0.8, text
    assert sum(corpus_shares(text)[1] for text in texts) / len(texts) >= 0.6, texts
    assert corpus_shares(greedy_texts(demo_dir, ["The scheduler runs"])[0])[1] < 0.3

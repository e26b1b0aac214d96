"""Writes the small, deterministic Qwen3-MoE checkpoint the server uses as its default model.

Everything is derived from fixed inputs (the shipped corpus, the config below, one seed). The
random checkpoint (`trained=False`, what tests build for themselves) is identical bytes on any
machine: the BPE trainer is deterministic, JSON keys are sorted, and weights come from numpy's
PCG64 generator, whose normal draws do not depend on CPU vector extensions the way torch's CPU
kernels can. The served one is then trained on the corpus (train.py), so it speaks corpus-like
English; that is reproducible on one kind of machine (same CPU, same torch).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from laminar.demo.train import train

# Bump when the recipe changes so existing directories are rewritten.
WRITER_VERSION = 2
SEED = 0
WEIGHT_STD = 0.02
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = Path(__file__).with_name("corpus.txt")
STAMP = "laminar_demo.json"
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json")

# Qwen3's chat format, tools and thinking included: tool signatures in a system turn, calls as
# <tool_call> JSON, tool results as user turns in <tool_response>, and enable_thinking=false
# closing an empty think block, so the OpenAI API's tool and reasoning paths run on the demo model.
CHAT_TEMPLATE = (
    "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system\\n' }}{% if system is not none %}{{ system + '\\n\\n' }}{% endif %}"
    "{{ 'Functions you may call, one JSON signature a line:\\n<tools>\\n' }}"
    "{%- for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor -%}"
    "{{ '</tools>\\nTo call one, answer with <tool_call>\\n{\"name\": NAME, \"arguments\": ARGS}\\n</tool_call>'"
    " + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if tools and loop.first and system is not none -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{% if message['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": ' + call['function']['name'] | tojson + ', \"arguments\": ' }}"
    "{{ call['function']['arguments'] | tojson }}{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif -%}"
    "{%- endif -%}"
)


def train_tokenizer() -> Tokenizer:
    """Byte-level BPE (every string encodes, via single-byte tokens) trained on the corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines(), trainer)
    return tok


def model_config(vocab_size: int, bos_id: int, eos_id: int) -> dict:
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "vocab_size": vocab_size,
        # Small enough to train on the corpus in a CPU minute or two (train.py), yet every
        # part a Qwen3-MoE has: GQA with q/k norms, a router, top-k of several experts per layer.
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 256,
        "intermediate_size": 512,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
        "hidden_act": "silu",
        "rope_theta": 1000000.0,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "initializer_range": WEIGHT_STD,
        "use_cache": True,
        "torch_dtype": "float32",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


def weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes (Linear weights are [out, in]), in generation order."""
    h, e = cfg["hidden_size"], cfg["num_experts"]
    q_out = cfg["num_attention_heads"] * cfg["head_dim"]
    kv_out = cfg["num_key_value_heads"] * cfg["head_dim"]
    inter = cfg["moe_intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg["vocab_size"], h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (h,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (h,)
        shapes[f"{p}.self_attn.q_proj.weight"] = (q_out, h)
        shapes[f"{p}.self_attn.k_proj.weight"] = (kv_out, h)
        shapes[f"{p}.self_attn.v_proj.weight"] = (kv_out, h)
        shapes[f"{p}.self_attn.o_proj.weight"] = (h, q_out)
        shapes[f"{p}.self_attn.q_norm.weight"] = (cfg["head_dim"],)
        shapes[f"{p}.self_attn.k_norm.weight"] = (cfg["head_dim"],)
        shapes[f"{p}.mlp.gate.weight"] = (e, h)
        for x in range(e):
            shapes[f"{p}.mlp.experts.{x}.gate_proj.weight"] = (inter, h)
            shapes[f"{p}.mlp.experts.{x}.up_proj.weight"] = (inter, h)
            shapes[f"{p}.mlp.experts.{x}.down_proj.weight"] = (h, inter)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (cfg["vocab_size"], h)
    return shapes


def make_weights(cfg: dict) -> dict[str, torch.Tensor]:
    """Norm weights are 1 (as after HF init); everything else is N(0, 0.02)."""
    rng = np.random.default_rng(SEED)
    weights = {}
    for name, shape in weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            weights[name] = torch.ones(shape, dtype=torch.float32)
        else:
            draw = rng.standard_normal(shape, dtype=np.float32) * np.float32(WEIGHT_STD)
            weights[name] = torch.from_numpy(draw)
    return weights


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def build_files(trained: bool) -> dict[str, bytes]:
    """All checkpoint files as bytes, keyed by file name."""
    tok = train_tokenizer()
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    cfg = model_config(tok.get_vocab_size(with_added_tokens=True), bos_id=eot, eos_id=im_end)
    generation = {"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot}
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": cfg["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for t, i in ids.items()
        },
    }
    return {
        "config.json": _json_bytes(cfg),
        "generation_config.json": _json_bytes(generation),
        "model.safetensors": _safetensors_bytes(weights(cfg, tok, trained)),
        "tokenizer.json": tok.to_str(pretty=True).encode("utf-8"),
        "tokenizer_config.json": _json_bytes(tok_config),
    }


def weights(cfg: dict, tok: Tokenizer, trained: bool) -> dict[str, torch.Tensor]:
    """The random weights, trained on the corpus unless `trained` is False."""
    initial = make_weights(cfg)
    if not trained:
        return initial
    return train(initial, cfg, CORPUS.read_text(encoding="utf-8"), lambda text: tok.encode(text).ids, log=_progress)


def _progress(line: str) -> None:
    print(f"[laminar.demo] {line}", file=sys.stderr, flush=True)


def _safetensors_bytes(weights: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors(weights, metadata={"format": "pt"})


def _recipe_hash(trained: bool) -> str:
    """Identifies the inputs (this package's code and corpus included); a stamp with another
    recipe means the directory is stale, so a changed recipe or corpus rewrites it."""
    h = hashlib.sha256(f"v{WRITER_VERSION}/seed{SEED}/vocab{VOCAB_SIZE}/trained{trained}/".encode())
    for source in sorted(CORPUS.parent.glob("*.py")) + [CORPUS]:
        h.update(source.name.encode() + b"\0" + source.read_bytes())
    return h.hexdigest()


def is_complete(out_dir: Path, trained: bool) -> bool:
    """Whether `out_dir` holds this exact checkpoint (recipe and file hashes per the stamp)."""
    stamp_path = out_dir / STAMP
    if not stamp_path.is_file():
        return False
    try:
        stamp = json.loads(stamp_path.read_text())
    except ValueError:
        return False
    if stamp.get("recipe") != _recipe_hash(trained) or set(stamp.get("files", {})) != set(FILES):
        return False
    return all(
        (out_dir / name).is_file()
        and hashlib.sha256((out_dir / name).read_bytes()).hexdigest() == digest
        for name, digest in stamp["files"].items()
    )


def write_demo_checkpoint(out_dir: Path, force: bool = False, trained: bool = True) -> Path:
    """Writes the demo checkpoint into `out_dir` and returns it: trained on the corpus (a CPU
    minute or two), or with its random initial weights when `trained` is False (seconds).

    Does nothing when `out_dir` already holds this exact checkpoint (checked against the
    stamp file's hashes). Refuses, unless `force`, to write into a directory holding files
    that are not ours, so a real model directory is never clobbered by accident.
    """
    out_dir = Path(out_dir)
    if not force and is_complete(out_dir, trained):
        return out_dir
    if out_dir.is_dir() and not force:
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in (*FILES, STAMP))
        if foreign:
            raise FileExistsError(
                f"{out_dir} holds files that are not part of the demo checkpoint "
                f"({', '.join(foreign[:5])}); pass force=True / --force to write anyway"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP).unlink(missing_ok=True)
    digests = {}
    for name, data in build_files(trained).items():
        _atomic_write(out_dir / name, data)
        digests[name] = hashlib.sha256(data).hexdigest()
    stamp = {"recipe": _recipe_hash(trained), "trained": trained, "files": digests}
    _atomic_write(out_dir / STAMP, _json_bytes(stamp))
    return out_dir


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers (e.g. a server starting concurrently) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)

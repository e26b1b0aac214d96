"""FP8 copies of tiny HF checkpoints, as the real releases store them, and their dequantized twins.

"block" follows Qwen3-30B-A3B-FP8 (`quant_method: "fp8"`, float32 `weight_scale_inv` per block,
`modules_to_not_convert`); "channel" follows llm-compressor's FP8-dynamic checkpoints
(`quant_method: "compressed-tensors"`, `weight_scale` [N, 1] per output channel, dynamic per-token
activations, an `ignore` list). Both quantize the attention projections, the dense MLP and every
expert; the router, norms, embedding and LM head stay as they were, and so do the `keep` modules
(listed in the config's ignore list). The reference checkpoint holds the same weights dequantized
to fp32 (what transformers runs), so the two are one model.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from laminar.ops.torch_ops import dequantize_fp8, quantize_fp8

QUANTIZED = re.compile(r"\.(self_attn\.[qkvo]_proj|mlp\.(experts\.\d+\.)?(gate|up|down)_proj)\.weight$")


def block_config(block: tuple[int, int], keep: list[str]) -> dict:
    return {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block),
            "modules_to_not_convert": ["lm_head", "model.embed_tokens", *keep]}


def channel_config(keep: list[str]) -> dict:
    float8 = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "block_structure": None,
              "actorder": None, "observer_kwargs": {}}
    return {
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "kv_cache_scheme": None, "global_compression_ratio": None, "sparsity_config": {},
        "config_groups": {"group_0": {
            "targets": ["Linear"], "output_activations": None,
            "weights": {**float8, "strategy": "channel", "dynamic": False, "observer": "minmax"},
            "input_activations": {**float8, "strategy": "token", "dynamic": True, "observer": None},
        }},
        "ignore": ["lm_head", "re:.*mlp\\.gate$", *keep],
    }


def write_fp8_checkpoint(src: Path, out: Path, scheme: str, block: tuple[int, int] = (16, 24),
                         keep: tuple[str, ...] = (), split_scales: bool = False) -> dict[str, Path]:
    """Writes out/fp8 and out/ref from the checkpoint in src; returns {"fp8": dir, "ref": dir}.
    keep: checkpoint modules left unquantized; split_scales puts every scale in a second shard."""
    tensors = {k: v for f in sorted(src.glob("*.safetensors")) for k, v in load_file(f).items()}
    weights, scales, ref = {}, {}, {}
    for name, w in tensors.items():
        module = name.removesuffix(".weight")
        if not QUANTIZED.search(name) or module in keep:
            weights[name] = ref[name] = w
            continue
        q, s = quantize_fp8(w, block if scheme == "block" else None)
        s = s if scheme == "block" else s[:, None]
        weights[name], ref[name] = q, dequantize_fp8(q, s, torch.float32)
        scales[module + (".weight_scale_inv" if scheme == "block" else ".weight_scale")] = s
    dirs = {"fp8": out / "fp8", "ref": out / "ref"}
    for d in dirs.values():
        shutil.copytree(src, d, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_file(ref, str(dirs["ref"] / "model.safetensors"))
    if split_scales:
        shards = {"model-00001-of-00002.safetensors": weights, "model-00002-of-00002.safetensors": scales}
        for file, part in shards.items():
            save_file(part, str(dirs["fp8"] / file))
        index = {"metadata": {}, "weight_map": {n: file for file, part in shards.items() for n in part}}
        (dirs["fp8"] / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    else:
        save_file({**weights, **scales}, str(dirs["fp8"] / "model.safetensors"))
    cfg_path = dirs["fp8"] / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = block_config(block, list(keep)) if scheme == "block" else channel_config(list(keep))
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return dirs

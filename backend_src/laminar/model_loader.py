"""Builds one rank's model and fills its weights: construction on the target device and dtype,
then the checkpoint (or random weights), then the load-time conversions EngineArgs asks for."""
from __future__ import annotations

import torch

from laminar.config import EngineArgs, ModelConfig
from laminar.distributed import TensorParallel
from laminar.loader import load_dummy, load_safetensors
from laminar.models import CausalLM, model_class
from laminar.ops import get_ops


def load_model(cfg: ModelConfig, args: EngineArgs, device: torch.device, dtype: torch.dtype,
               max_model_len: int, tp: TensorParallel, layers: range) -> CausalLM:
    """The model with this rank's shard of the weights of these layers (its pipeline stage's), built
    in place on the device (no CPU copy first), in inference mode."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            ops = get_ops(device, args.ops, args.flash_attn, args.flashinfer, args.attention, args.moe)
            model = model_class(cfg)(cfg, ops, max_model_len, tp, layers)
    finally:
        torch.set_default_dtype(default_dtype)
    model.requires_grad_(False)
    if args.load_format == "dummy":
        load_dummy(model, args.seed)
    else:
        load_safetensors(model, args.model)
    if args.dequantize_experts:
        model.dequantize_experts()
    model.post_load()
    return model

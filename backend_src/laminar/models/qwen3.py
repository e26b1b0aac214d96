"""Qwen3 and Qwen3-MoE decoders: which layers they stack (the step's forward is laminar.forward)."""
from __future__ import annotations

from laminar.models.causal_lm import CausalLM
from laminar.models.layers import Attention, DecoderLayer, DenseMLP, SparseMoE
from laminar.models.placements import Placement
from laminar.models.qwen3_weights import qwen3_placements


class Qwen3ForCausalLM(CausalLM):
    """Qwen3 (dense) and Qwen3-MoE: q/k norms, no biases; which layers carry experts comes from the config."""

    def placements(self, name: str) -> list[Placement]:
        return qwen3_placements(self, name)

    def make_layer(self, index: int) -> DecoderLayer:
        cfg, ops, tp, layout = self.cfg, self.ops, self.tp, self.layout
        fmt, at = cfg.quantization.format_of, f"model.layers.{index}."
        attn = Attention(cfg, ops, tp, layout, self.rotary.cos_sin, qk_norm=True,
                         qkv_format=fmt(*(f"{at}self_attn.{p}_proj" for p in "qkv")),
                         o_format=fmt(f"{at}self_attn.o_proj"))
        moe = self.moe_index.get(index)
        if moe is not None:
            # expert 0 stands for all: a checkpoint that quantizes experts unevenly fails at load (dtype check)
            experts = fmt(*(f"{at}mlp.experts.0.{p}_proj" for p in ("gate", "up", "down")))
            mlp = SparseMoE(cfg, ops, moe, tp, layout, fmt=experts)
        else:
            mlp = DenseMLP(cfg.hidden_size, layout.intermediate_size, ops, tp,
                           gate_up_format=fmt(f"{at}mlp.gate_proj", f"{at}mlp.up_proj"),
                           down_format=fmt(f"{at}mlp.down_proj"))
        return DecoderLayer(cfg, ops, attn, mlp)

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
        attn = Attention(cfg, ops, tp, layout, self.rotary.cos_sin, qk_norm=True)
        moe = self.moe_index.get(index)
        mlp = (SparseMoE(cfg, ops, moe, tp, layout) if moe is not None
               else DenseMLP(cfg.hidden_size, layout.intermediate_size, ops, tp))
        return DecoderLayer(cfg, ops, attn, mlp)

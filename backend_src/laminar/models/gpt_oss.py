"""GPT-OSS decoder: which layers it stacks (the step's forward is laminar.forward).

Every layer has biased qkv / o projections, a learned sink logit per head, a sliding window
on the layers its config marks sliding (alternately), and an MoE whose router and experts
have biases and whose experts apply the clamped SwiGLU; RoPE is YaRN-scaled.
"""
from __future__ import annotations

from laminar.models.causal_lm import CausalLM
from laminar.models.gpt_oss_weights import gpt_oss_placements
from laminar.models.layers import Attention, DecoderLayer, SparseMoE
from laminar.models.placements import Placement


class GptOssForCausalLM(CausalLM):
    def placements(self, name: str) -> list[Placement]:
        return gpt_oss_placements(self, name)

    def make_layer(self, index: int) -> DecoderLayer:
        cfg, ops, tp, layout = self.cfg, self.ops, self.tp, self.layout
        fmt, at = cfg.quantization.format_of, f"model.layers.{index}."
        attn = Attention(cfg, ops, tp, layout, self.rotary.cos_sin, qk_norm=False, biases=True, sinks=True,
                         window=cfg.window(index), qkv_format=fmt(*(f"{at}self_attn.{p}_proj" for p in "qkv")),
                         o_format=fmt(f"{at}self_attn.o_proj"))
        experts = fmt(f"{at}mlp.experts.gate_up_proj", f"{at}mlp.experts.down_proj")
        mlp = SparseMoE(cfg, ops, self.moe_index[index], tp, layout, biases=True, fmt=experts)
        return DecoderLayer(cfg, ops, attn, mlp)

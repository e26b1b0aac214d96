"""Qwen3 and Qwen3-MoE decoders: the layers and their weights (the step's forward is laminar.forward).

Under tensor parallelism each module is one rank's shard: embedding and LM head split the
vocabulary, attention and MLPs split heads and intermediate sizes; the residual stream is
replicated on every rank.
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from laminar.config import ModelConfig
from laminar.distributed import ShardLayout, TensorParallel
from laminar.ops import AttentionMetadata


class RotaryCache(nn.Module):
    """cos | sin table for neox-style RoPE, indexed by position."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos_sin", torch.cat((freqs.cos(), freqs.sin()), dim=-1), persistent=False)


class Attention(nn.Module):
    """Column-parallel qkv (this rank's heads), row-parallel o_proj, one all-reduce."""

    def __init__(self, cfg: ModelConfig, ops: ModuleType, tp: TensorParallel, layout: ShardLayout,
                 cos_sin: torch.Tensor) -> None:
        super().__init__()
        self.ops, self.tp, self.cos_sin = ops, tp, cos_sin  # cos_sin: the model's shared table, not a buffer
        self.num_heads, self.num_kv_heads, self.head_dim = layout.num_heads, layout.num_kv_heads, cfg.head_dim
        self.eps = cfg.rms_norm_eps
        self.scale = cfg.head_dim**-0.5
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Parameter(torch.empty(q_size + 2 * kv_size, cfg.hidden_size))
        self.o_proj = nn.Parameter(torch.empty(cfg.hidden_size, q_size))
        self.q_norm = nn.Parameter(torch.ones(self.head_dim))
        self.k_norm = nn.Parameter(torch.ones(self.head_dim))

    def project(
        self, x: torch.Tensor, positions: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor],
        slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """Queries of the new tokens; their keys and values go into the cache."""
        ops, t = self.ops, x.shape[0]
        q, k, v = F.linear(x, self.qkv_proj).split(self.split, dim=-1)
        q = ops.rms_norm(q.reshape(t, self.num_heads, self.head_dim), self.q_norm, self.eps)
        k = ops.rms_norm(k.reshape(t, self.num_kv_heads, self.head_dim), self.k_norm, self.eps)
        q, k = ops.rope(q, k, positions, self.cos_sin)
        ops.store_kv(k, v.reshape(t, self.num_kv_heads, self.head_dim), kv_cache[0], kv_cache[1], slot_mapping)
        return q

    def attend(self, q: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata) -> torch.Tensor:
        return self.ops.paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale)

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(F.linear(attn.reshape(attn.shape[0], -1), self.o_proj))


class DenseMLP(nn.Module):
    """SwiGLU over this rank's slice of the intermediate dimension, one all-reduce."""

    def __init__(self, hidden: int, intermediate: int, ops: ModuleType, tp: TensorParallel) -> None:
        super().__init__()
        self.ops, self.tp = ops, tp
        self.gate_up_proj = nn.Parameter(torch.empty(2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(hidden, intermediate))

    def forward(self, x: torch.Tensor, expert_hits: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(F.linear(self.ops.silu_and_mul(F.linear(x, self.gate_up_proj)), self.down_proj))


class SparseMoE(nn.Module):
    """Softmax top-k router over SwiGLU experts; marks which experts its tokens touched.

    The router is replicated; every expert holds this rank's slice of its
    intermediate dimension (the TP-sharded fused MoE), so one all-reduce follows.
    """

    def __init__(self, cfg: ModelConfig, ops: ModuleType, moe_index: int, tp: TensorParallel,
                 layout: ShardLayout) -> None:
        super().__init__()
        self.ops, self.moe_index, self.tp = ops, moe_index, tp
        self.top_k, self.renormalize = cfg.top_k, cfg.norm_topk_prob
        e, h, i = cfg.num_experts, cfg.hidden_size, layout.moe_intermediate_size
        self.gate = nn.Parameter(torch.empty(e, h))
        self.w13 = nn.Parameter(torch.empty(e, 2 * i, h))
        self.w2 = nn.Parameter(torch.empty(e, h, i))

    def forward(self, x: torch.Tensor, expert_hits: torch.Tensor) -> torch.Tensor:
        weights, ids = self.ops.route_topk(F.linear(x, self.gate), self.top_k, self.renormalize)
        expert_hits[self.moe_index].index_fill_(0, ids.flatten(), True)  # scalar fill: capturable in graphs
        return self.tp.all_reduce(self.ops.fused_moe(x, self.w13, self.w2, weights, ids))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, moe_index: int | None, ops: ModuleType, tp: TensorParallel,
                 layout: ShardLayout, cos_sin: torch.Tensor) -> None:
        super().__init__()
        self.ops, self.eps = ops, cfg.rms_norm_eps
        self.input_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.self_attn = Attention(cfg, ops, tp, layout, cos_sin)
        self.mlp = (
            SparseMoE(cfg, ops, moe_index, tp, layout) if moe_index is not None
            else DenseMLP(cfg.hidden_size, layout.intermediate_size, ops, tp)
        )

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata, expert_hits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block; (hidden, residual) sum to the residual stream between layers."""
        q, residual = self.before_attention(hidden, residual, positions, kv_cache, meta.slot_mapping)
        return self.after_attention(self.self_attn.attend(q, kv_cache, meta), residual, expert_hits)

    # The two halves around attention: the parts whose shapes depend only on the token count
    # (so mixed batches can replay them as CUDA graphs; see cuda_graphs.MixedGraphs).
    def before_attention(
        self, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor], slot_mapping: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.ops.add_rms_norm(hidden, residual, self.input_layernorm, self.eps)
        return self.self_attn.project(x, positions, kv_cache, slot_mapping), residual

    def after_attention(
        self, attn: torch.Tensor, residual: torch.Tensor, expert_hits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.ops.add_rms_norm(self.self_attn.output(attn), residual, self.post_attention_layernorm,
                                            self.eps)
        return self.mlp(x, expert_hits), residual


class Qwen3ForCausalLM(nn.Module):
    """Qwen3 (dense) and Qwen3-MoE: the layer layout comes from the config."""

    def __init__(self, cfg: ModelConfig, ops: ModuleType, max_positions: int,
                 tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.cfg, self.ops = cfg, ops
        self.tp = tp = tp or TensorParallel()
        self.layout = layout = ShardLayout.of(cfg, tp)
        self.embed_tokens = nn.Parameter(torch.empty(layout.vocab_per_rank, cfg.hidden_size))
        self.rotary = RotaryCache(cfg.head_dim, max_positions, cfg.rope_theta)
        moe_layers = [i for i in range(cfg.num_layers) if cfg.is_moe_layer(i)]
        self.moe_index = {layer: n for n, layer in enumerate(moe_layers)}
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, self.moe_index.get(i), ops, tp, layout, self.rotary.cos_sin)
            for i in range(cfg.num_layers)
        )
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = (
            None if cfg.tie_word_embeddings else nn.Parameter(torch.empty(layout.vocab_per_rank, cfg.hidden_size))
        )

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_index)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel lookup: each rank fills the rows of its vocabulary range, the sum joins them."""
        if self.tp.size == 1:
            return F.embedding(ids, self.embed_tokens)
        local = ids - self.layout.vocab_start
        mine = (local >= 0) & (local < self.layout.vocab_per_rank)
        hidden = F.embedding(torch.where(mine, local, 0), self.embed_tokens)
        return self.tp.all_reduce(hidden * mine.unsqueeze(-1).to(hidden.dtype))

    def logits(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the whole vocabulary from the last layer's rows."""
        final = self.ops.rms_norm(hidden + residual, self.norm, self.cfg.rms_norm_eps)
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        return self.tp.gather_columns(F.linear(final, head))[:, : self.cfg.vocab_size].float()

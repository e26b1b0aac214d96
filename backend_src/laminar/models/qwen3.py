"""Qwen3 and Qwen3-MoE decoders with a layer-group-aware forward pass.

One forward runs the decode tokens through every layer and joins the prefill
tokens for one contiguous range of layers (all layers in chunked mode, one
group in layered mode): decode-only layers before that range, the mixed
range, then decode-only layers after it. The prefill tokens enter either as token ids (their
group starts at layer 0) or as the hidden state and residual they left the
previous group with, and leave the same way when their group is not the last.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from laminar.config import ModelConfig
from laminar.distributed import ShardLayout, TensorParallel
from laminar.ops import AttentionMetadata


@dataclass
class ForwardBatch:
    """The tensors of one iteration. Decode rows come first, prefill rows after them."""

    decode_ids: torch.Tensor          # [Td] the last token of each decoding sequence
    decode_positions: torch.Tensor    # [Td]
    decode_meta: AttentionMetadata | None
    prefill_layers: range             # layers the prefill rows pass in this iteration (empty: none)
    prefill_ids: torch.Tensor | None  # [Tp] when prefill_layers starts at 0
    prefill_hidden: torch.Tensor | None    # [Tp, H] carried from the previous group
    prefill_residual: torch.Tensor | None  # [Tp, H]
    mixed_positions: torch.Tensor | None   # [Td + Tp]
    mixed_meta: AttentionMetadata | None
    logits_rows: torch.Tensor         # rows of the final hidden states that need logits


@dataclass
class ForwardResult:
    logits: torch.Tensor | None                      # [len(logits_rows), V] fp32
    prefill_carry: tuple[torch.Tensor, torch.Tensor] | None  # prefill (hidden, residual) after its group


class RotaryCache(nn.Module):
    """cos | sin table for neox-style RoPE, indexed by position."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos_sin", torch.cat((freqs.cos(), freqs.sin()), dim=-1), persistent=False)


class Attention(nn.Module):
    """Column-parallel qkv (this rank's heads), row-parallel o_proj, one all-reduce."""

    def __init__(self, cfg: ModelConfig, ops: ModuleType, tp: TensorParallel, layout: ShardLayout) -> None:
        super().__init__()
        self.ops, self.tp = ops, tp
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
        slot_mapping: torch.Tensor, cos_sin: torch.Tensor,
    ) -> torch.Tensor:
        """Queries of the new tokens; their keys and values go into the cache."""
        ops, t = self.ops, x.shape[0]
        q, k, v = F.linear(x, self.qkv_proj).split(self.split, dim=-1)
        q = ops.rms_norm(q.reshape(t, self.num_heads, self.head_dim), self.q_norm, self.eps)
        k = ops.rms_norm(k.reshape(t, self.num_kv_heads, self.head_dim), self.k_norm, self.eps)
        q, k = ops.rope(q, k, positions, cos_sin)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
                 layout: ShardLayout) -> None:
        super().__init__()
        self.ops, self.eps = ops, cfg.rms_norm_eps
        self.input_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.self_attn = Attention(cfg, ops, tp, layout)
        self.mlp = (
            SparseMoE(cfg, ops, moe_index, tp, layout) if moe_index is not None
            else DenseMLP(cfg.hidden_size, layout.intermediate_size, ops, tp)
        )

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata, cos_sin: torch.Tensor,
        expert_hits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block; (hidden, residual) sum to the residual stream between layers."""
        q, residual = self.before_attention(hidden, residual, positions, kv_cache, meta.slot_mapping, cos_sin)
        return self.after_attention(self.self_attn.attend(q, kv_cache, meta), residual, expert_hits)

    # The two halves around attention: the parts whose shapes depend only on the token count
    # (so mixed batches can replay them as CUDA graphs; see cuda_graphs.MixedGraphs).
    def before_attention(
        self, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor], slot_mapping: torch.Tensor, cos_sin: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.ops.add_rms_norm(hidden, residual, self.input_layernorm, self.eps)
        return self.self_attn.project(x, positions, kv_cache, slot_mapping, cos_sin), residual

    def after_attention(
        self, attn: torch.Tensor, residual: torch.Tensor, expert_hits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.ops.add_rms_norm(self.self_attn.output(attn), residual, self.post_attention_layernorm,
                                            self.eps)
        x = self.mlp(x, expert_hits) if isinstance(self.mlp, SparseMoE) else self.mlp(x)
        return x, residual


class Qwen3ForCausalLM(nn.Module):
    """Qwen3 (dense) and Qwen3-MoE: the layer layout comes from the config.

    Under tensor parallelism this module is one rank's shard: embedding and LM
    head split the vocabulary, attention and MLPs split heads and intermediate
    sizes; the residual stream is replicated on every rank.
    """

    def __init__(self, cfg: ModelConfig, ops: ModuleType, max_positions: int,
                 tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.cfg, self.ops = cfg, ops
        self.tp = tp = tp or TensorParallel()
        self.layout = layout = ShardLayout.of(cfg, tp)
        self.embed_tokens = nn.Parameter(torch.empty(layout.vocab_per_rank, cfg.hidden_size))
        moe_layers = [i for i in range(cfg.num_layers) if cfg.is_moe_layer(i)]
        self.moe_index = {layer: n for n, layer in enumerate(moe_layers)}
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, self.moe_index.get(i), ops, tp, layout) for i in range(cfg.num_layers)
        )
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = (
            None if cfg.tie_word_embeddings else nn.Parameter(torch.empty(layout.vocab_per_rank, cfg.hidden_size))
        )
        self.rotary = RotaryCache(cfg.head_dim, max_positions, cfg.rope_theta)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_index)

    def forward(
        self, batch: ForwardBatch, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], expert_hits: torch.Tensor,
        decode_graphs=None, mixed_graphs=None,
    ) -> ForwardResult:
        """Decode rows cross every layer; prefill rows join for batch.prefill_layers.

        decode_graphs (a loaded DecodeGraphs, or None) replays the decode-only layers;
        mixed_graphs (a MixedGraphs, or None) the layers of the mixed range around attention.
        """
        num_layers, pre = self.cfg.num_layers, batch.prefill_layers
        num_decode = batch.decode_ids.shape[0]
        hidden = self._embed(batch.decode_ids)
        residual = torch.zeros_like(hidden)
        carry = None
        before, after = (range(pre.start), range(pre.stop, num_layers)) if len(pre) else (range(num_layers), range(0))
        if num_decode:
            hidden, residual = self._decode_layers(before, hidden, residual, batch, kv_caches, expert_hits,
                                                   decode_graphs)
        if len(pre):
            if batch.prefill_ids is not None:
                p_hidden = self._embed(batch.prefill_ids)
                p_residual = torch.zeros_like(p_hidden)
            else:
                p_hidden, p_residual = batch.prefill_hidden, batch.prefill_residual
            hidden, residual = torch.cat((hidden, p_hidden)), torch.cat((residual, p_residual))
            if mixed_graphs is not None and mixed_graphs.fits(hidden.shape[0]):
                hidden, residual = mixed_graphs.run(pre, hidden, residual, batch.mixed_positions, batch.mixed_meta)
            else:
                for i in pre:
                    hidden, residual = self.layers[i](hidden, residual, batch.mixed_positions, kv_caches[i],
                                                      batch.mixed_meta, self.rotary.cos_sin, expert_hits)
            if pre.stop < num_layers:
                carry = (hidden[num_decode:], residual[num_decode:])
                hidden, residual = hidden[:num_decode], residual[:num_decode]
        if num_decode:
            hidden, residual = self._decode_layers(after, hidden, residual, batch, kv_caches, expert_hits,
                                                   decode_graphs)
        if batch.logits_rows.numel() == 0:
            return ForwardResult(None, carry)
        rows = batch.logits_rows
        final = self.ops.rms_norm(hidden[rows] + residual[rows], self.norm, self.cfg.rms_norm_eps)
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        logits = self.tp.gather_columns(F.linear(final, head))[:, : self.cfg.vocab_size]
        return ForwardResult(logits.float(), carry)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel lookup: each rank fills the rows of its vocabulary range, the sum joins them."""
        if self.tp.size == 1:
            return F.embedding(ids, self.embed_tokens)
        local = ids - self.layout.vocab_start
        mine = (local >= 0) & (local < self.layout.vocab_per_rank)
        hidden = F.embedding(torch.where(mine, local, 0), self.embed_tokens)
        return self.tp.all_reduce(hidden * mine.unsqueeze(-1).to(hidden.dtype))

    def _decode_layers(
        self, layers: range, hidden: torch.Tensor, residual: torch.Tensor, batch: ForwardBatch,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]], expert_hits: torch.Tensor, decode_graphs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not len(layers):
            return hidden, residual
        if decode_graphs is not None:
            return decode_graphs.run(layers, hidden, residual)
        for i in layers:
            hidden, residual = self.layers[i](hidden, residual, batch.decode_positions, kv_caches[i],
                                              batch.decode_meta, self.rotary.cos_sin, expert_hits)
        return hidden, residual

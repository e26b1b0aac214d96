"""Qwen3 and Qwen3-MoE decoders with a segment-aware forward pass.

One forward runs the decode tokens through every layer; each prefill segment's rows join
them for the segment's span of layers (the whole stack in chunked mode, part of it in layered
mode; see layered_prefill). The stack is cut into stretches where the set of rows is constant,
and each stretch runs as decode-only layers or as mixed layers. A segment's rows enter either
as token ids (its span starts at layer 0) or as the hidden state and residual they left the
previous iteration with, and leave the same way when their span stops short of the last layer.
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
class SegmentRows:
    """One prefill segment's rows: token ids when its span starts at layer 0, else the carried state."""

    batch_id: int
    layers: range
    num_rows: int
    ids: torch.Tensor | None
    hidden: torch.Tensor | None       # [rows, H] carried from the previous iteration
    residual: torch.Tensor | None


@dataclass
class Stretch:
    """Consecutive layers that run the same rows: the decodes plus the segments listed."""

    layers: range
    segments: tuple[int, ...]         # indices into ForwardBatch.segments; empty: decode rows only
    positions: torch.Tensor | None    # [rows] of a mixed stretch
    meta: AttentionMetadata | None


@dataclass
class ForwardBatch:
    """The tensors of one iteration. In every stretch decode rows come first, segment rows after them."""

    decode_ids: torch.Tensor          # [Td] the last token of each decoding sequence
    decode_positions: torch.Tensor | None  # [Td]; with decode_meta, None when no layer runs decodes alone
    decode_meta: AttentionMetadata | None
    segments: list[SegmentRows]
    stretches: list[Stretch]
    logits_rows: torch.Tensor         # rows of the last layer's output (decodes, then finishing segments)


@dataclass
class ForwardResult:
    logits: torch.Tensor | None                               # [len(logits_rows), V] fp32
    carry: dict[int, tuple[torch.Tensor, torch.Tensor]]       # batch id -> (hidden, residual) after its span


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
        """Decode rows cross every layer; each segment's rows join them for its span.

        decode_graphs (a loaded DecodeGraphs, or None) replays decode-only stretches;
        mixed_graphs (a MixedGraphs, or None) the layers of mixed stretches around attention.
        """
        num_decode = batch.decode_ids.shape[0]
        hidden = self._embed(batch.decode_ids)
        residual = torch.zeros_like(hidden)
        states = [self._segment_state(seg) for seg in batch.segments]
        for stretch in batch.stretches:
            if not stretch.segments:
                if num_decode:
                    hidden, residual = self._decode_layers(stretch.layers, hidden, residual, batch, kv_caches,
                                                           expert_hits, decode_graphs)
                continue
            rows = [(hidden, residual)] + [states[i] for i in stretch.segments]
            h, r = torch.cat([h for h, _ in rows]), torch.cat([r for _, r in rows])
            h, r = self._mixed_layers(stretch, h, r, kv_caches, expert_hits, mixed_graphs)
            sizes = [num_decode] + [batch.segments[i].num_rows for i in stretch.segments]
            parts = list(zip(h.split(sizes), r.split(sizes)))
            hidden, residual = parts[0]
            for i, part in zip(stretch.segments, parts[1:]):
                states[i] = part
        last = self.cfg.num_layers
        carry = {seg.batch_id: states[i] for i, seg in enumerate(batch.segments) if seg.layers.stop < last}
        if batch.logits_rows.numel() == 0:
            return ForwardResult(None, carry)
        finals = [(hidden, residual)] + [states[i] for i, seg in enumerate(batch.segments) if seg.layers.stop == last]
        rows = batch.logits_rows
        hidden, residual = torch.cat([h for h, _ in finals])[rows], torch.cat([r for _, r in finals])[rows]
        final = self.ops.rms_norm(hidden + residual, self.norm, self.cfg.rms_norm_eps)
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        logits = self.tp.gather_columns(F.linear(final, head))[:, : self.cfg.vocab_size]
        return ForwardResult(logits.float(), carry)

    def _segment_state(self, seg: SegmentRows) -> tuple[torch.Tensor, torch.Tensor]:
        if seg.ids is not None:
            hidden = self._embed(seg.ids)
            return hidden, torch.zeros_like(hidden)
        return seg.hidden, seg.residual

    def _mixed_layers(
        self, stretch: Stretch, hidden: torch.Tensor, residual: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]], expert_hits: torch.Tensor, mixed_graphs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mixed_graphs is not None and mixed_graphs.fits(hidden.shape[0]):
            return mixed_graphs.run(stretch.layers, hidden, residual, stretch.positions, stretch.meta)
        for i in stretch.layers:
            hidden, residual = self.layers[i](hidden, residual, stretch.positions, kv_caches[i], stretch.meta,
                                              self.rotary.cos_sin, expert_hits)
        return hidden, residual

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

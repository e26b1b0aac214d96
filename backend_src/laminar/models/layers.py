"""The layers the decoders are built from: attention, MLPs, and the pre-norm block around them.

Under tensor parallelism each module is one rank's shard: attention and MLPs split heads and
intermediate sizes (column-parallel in, row-parallel out, one all-reduce each), so the residual
stream is replicated on every rank. A row-parallel bias lives on rank 0 only: the all-reduce
sums the ranks' partial outputs, and the bias must join that sum once.
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from laminar.config import FULL_ATTENTION, ModelConfig
from laminar.distributed import ShardLayout, TensorParallel
from laminar.ops import AttentionMetadata, torch_ops

KVCache = tuple[torch.Tensor, torch.Tensor]


class Attention(nn.Module):
    """Column-parallel qkv (this rank's heads), row-parallel o_proj, one all-reduce.

    Qwen3 normalises q and k per head (qk_norm). GPT-OSS has biases on qkv and o_proj, one
    learned sink logit per head (fp32, in the softmax denominator only) and, on some layers,
    a sliding window.
    """

    def __init__(self, cfg: ModelConfig, ops: ModuleType, tp: TensorParallel, layout: ShardLayout,
                 cos_sin: torch.Tensor, qk_norm: bool = True, biases: bool = False, sinks: bool = False,
                 window: int = FULL_ATTENTION) -> None:
        super().__init__()
        self.ops, self.tp, self.cos_sin = ops, tp, cos_sin  # cos_sin: the model's shared table, not a buffer
        self.num_heads, self.num_kv_heads, self.head_dim = layout.num_heads, layout.num_kv_heads, cfg.head_dim
        self.eps = cfg.rms_norm_eps
        self.scale = cfg.head_dim**-0.5
        self.window = window
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Parameter(torch.empty(q_size + 2 * kv_size, cfg.hidden_size))
        self.o_proj = nn.Parameter(torch.empty(cfg.hidden_size, q_size))
        self.q_norm = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.qkv_bias = nn.Parameter(torch.empty(q_size + 2 * kv_size)) if biases else None
        self.o_bias = nn.Parameter(torch.empty(cfg.hidden_size)) if biases and tp.rank == 0 else None
        self.sinks = nn.Parameter(torch.empty(self.num_heads, dtype=torch.float32)) if sinks else None

    def project(
        self, x: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache, slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """Queries of the new tokens; their keys and values go into the cache."""
        ops, t = self.ops, x.shape[0]
        q, k, v = F.linear(x, self.qkv_proj, self.qkv_bias).split(self.split, dim=-1)
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = ops.rms_norm(q, self.q_norm, self.eps), ops.rms_norm(k, self.k_norm, self.eps)
        q, k = ops.rope(q, k, positions, self.cos_sin)
        ops.store_kv(k, v.reshape(t, self.num_kv_heads, self.head_dim), kv_cache[0], kv_cache[1], slot_mapping)
        return q

    def attend(self, q: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        return self.ops.paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale, sinks=self.sinks,
                                        window=self.window)

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(F.linear(attn.reshape(attn.shape[0], -1), self.o_proj, self.o_bias))


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

    The router is replicated; every expert holds this rank's slice of its intermediate
    dimension (the TP-sharded fused MoE), so one all-reduce follows. GPT-OSS adds biases
    (router, gate | up, down), the clamped SwiGLU, and MXFP4 expert weights: w13 / w2 then
    hold the packed e2m1 blocks and w13_scales / w2_scales their exponents (the layout of
    torch_ops.dequantize_mxfp4), which the fused MoE dequantizes as it multiplies.
    """

    def __init__(self, cfg: ModelConfig, ops: ModuleType, moe_index: int, tp: TensorParallel,
                 layout: ShardLayout, biases: bool = False, mxfp4: bool = False) -> None:
        super().__init__()
        self.ops, self.moe_index, self.tp = ops, moe_index, tp
        self.top_k, self.renormalize = cfg.top_k, cfg.norm_topk_prob
        self.num_experts = e = cfg.num_experts
        h, i = cfg.hidden_size, layout.moe_intermediate_size
        self.gate = nn.Parameter(torch.empty(e, h))
        self.gate_bias = nn.Parameter(torch.empty(e)) if biases else None
        if mxfp4:
            if h % 32 or i % 32:
                raise ValueError(f"MXFP4 experts need hidden ({h}) and per-rank intermediate ({i}) sizes divisible "
                                 "by 32 (one scale per 32 values): use fewer ranks or dequantize_experts")
            self.w13, self.w13_scales = _mxfp4_pair(e, 2 * i, h)
            self.w2, self.w2_scales = _mxfp4_pair(e, h, i)
        else:
            self.w13 = nn.Parameter(torch.empty(e, 2 * i, h))
            self.w2 = nn.Parameter(torch.empty(e, h, i))
            self.w13_scales = self.w2_scales = None
        self.w13_bias = nn.Parameter(torch.empty(e, 2 * i)) if biases else None
        self.w2_bias = nn.Parameter(torch.empty(e, h)) if biases and tp.rank == 0 else None
        self.swiglu = (cfg.swiglu_alpha, cfg.swiglu_limit) if cfg.swiglu_limit is not None else None

    def forward(self, x: torch.Tensor, expert_hits: torch.Tensor) -> torch.Tensor:
        weights, ids = self.ops.route_topk(F.linear(x, self.gate, self.gate_bias), self.top_k, self.renormalize)
        expert_hits[self.moe_index].index_fill_(0, ids.flatten(), True)  # scalar fill: capturable in graphs
        return self.tp.all_reduce(self.ops.fused_moe(
            x, self.w13, self.w2, weights, ids, b13=self.w13_bias, b2=self.w2_bias,
            w13_scales=self.w13_scales, w2_scales=self.w2_scales, swiglu=self.swiglu))

    def dequantize_(self) -> None:
        """Replaces MXFP4 experts by dense ones in the model dtype (the load-time fallback), expert by expert."""
        if self.w13_scales is None:
            return
        dtype = self.gate.dtype
        for name in ("w13", "w2"):
            blocks, scales = getattr(self, name), getattr(self, name + "_scales")
            dense = torch.stack([torch_ops.dequantize_mxfp4(b, s, dtype) for b, s in zip(blocks, scales)])
            setattr(self, name, nn.Parameter(dense, requires_grad=False))
            setattr(self, name + "_scales", None)

    def expert_bytes(self) -> int:
        """Bytes of one whole expert's weights as held (every rank's slice), what each expert its tokens
        touch costs to read: 3 H I values at the dtype's size, or 4.25 bits a value in MXFP4."""
        held = (self.w13, self.w2, self.w13_scales, self.w2_scales)
        return sum(p.numel() * p.element_size() for p in held if p is not None) // self.num_experts * self.tp.size


def _mxfp4_pair(experts: int, rows: int, cols: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Packed e2m1 blocks [E, rows, cols/32, 16] and e8m0 scales [E, rows, cols/32], as the release stores them."""
    groups = cols // 32
    return (nn.Parameter(torch.empty(experts, rows, groups, 16, dtype=torch.uint8), requires_grad=False),
            nn.Parameter(torch.empty(experts, rows, groups, dtype=torch.uint8), requires_grad=False))


class DecoderLayer(nn.Module):
    """Pre-norm block around any attention and MLP of this module."""

    def __init__(self, cfg: ModelConfig, ops: ModuleType, self_attn: Attention, mlp: DenseMLP | SparseMoE) -> None:
        super().__init__()
        self.ops, self.eps = ops, cfg.rms_norm_eps
        self.input_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.self_attn = self_attn
        self.mlp = mlp

    def forward(
        self, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache,
        meta: AttentionMetadata, expert_hits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, residual) sum to the residual stream between layers."""
        q, residual = self.before_attention(hidden, residual, positions, kv_cache, meta.slot_mapping)
        return self.after_attention(self.self_attn.attend(q, kv_cache, meta), residual, expert_hits)

    # The two halves around attention: the parts whose shapes depend only on the token count
    # (so mixed batches can replay them as CUDA graphs; see cuda_graphs.MixedGraphs).
    def before_attention(
        self, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache,
        slot_mapping: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.ops.add_rms_norm(hidden, residual, self.input_layernorm, self.eps)
        return self.self_attn.project(x, positions, kv_cache, slot_mapping), residual

    def after_attention(
        self, attn: torch.Tensor, residual: torch.Tensor, expert_hits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.ops.add_rms_norm(self.self_attn.output(attn), residual, self.post_attention_layernorm,
                                            self.eps)
        return self.mlp(x, expert_hits), residual

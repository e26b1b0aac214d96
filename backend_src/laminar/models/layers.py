"""The layers the decoders are built from: attention, MLPs, and the pre-norm block around them.

Under tensor parallelism each module is one rank's shard: attention and MLPs split heads and
intermediate sizes (column-parallel in, row-parallel out, one all-reduce each), so the residual
stream is replicated on every rank. A row-parallel bias lives on rank 0 only: the all-reduce
sums the ranks' partial outputs, and the bias must join that sum once.

Each linear weight is held in its WeightFormat (laminar.formats): `name` and `name_scales` (None
when unquantized) as the format allocates them, recorded in the module's `formats` dict so that
loading, dummy values and the post-load hook find them.
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from laminar.config import FULL_ATTENTION, ModelConfig
from laminar.distributed import ShardLayout, TensorParallel
from laminar.formats import UNQUANTIZED, WeightFormat
from laminar.ops import AttentionMetadata

KVCache = tuple[torch.Tensor, torch.Tensor]


def hold(module: nn.Module, name: str, fmt: WeightFormat, rows: int, cols: int, experts: int | None = None,
         cuts: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())) -> None:
    """Gives `module` the weight `name` [experts?, rows, cols] and its scales `name`_scales, in `fmt`.
    cuts: the sizes of the pieces the rows / columns are cut into (fused parts, this rank's shard)."""
    fmt.check_cuts(name, *cuts)
    if "formats" not in module.__dict__:
        module.formats = {}
    module.formats[name] = fmt
    weight, scales = fmt.allocate(rows, cols, experts)
    setattr(module, name, weight)
    setattr(module, name + "_scales", scales)


class Attention(nn.Module):
    """Column-parallel qkv (this rank's heads), row-parallel o_proj, one all-reduce.

    Qwen3 normalises q and k per head (qk_norm). GPT-OSS has biases on qkv and o_proj, one
    learned sink logit per head (fp32, in the softmax denominator only) and, on some layers,
    a sliding window.
    """

    def __init__(self, cfg: ModelConfig, ops: ModuleType, tp: TensorParallel, layout: ShardLayout,
                 cos_sin: torch.Tensor, qk_norm: bool = True, biases: bool = False, sinks: bool = False,
                 window: int = FULL_ATTENTION, qkv_format: WeightFormat = UNQUANTIZED,
                 o_format: WeightFormat = UNQUANTIZED) -> None:
        super().__init__()
        self.ops, self.tp, self.cos_sin = ops, tp, cos_sin  # cos_sin: the model's shared table, not a buffer
        self.num_heads, self.num_kv_heads, self.head_dim = layout.num_heads, layout.num_kv_heads, cfg.head_dim
        self.eps = cfg.rms_norm_eps
        self.scale = cfg.head_dim**-0.5
        self.window = window
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        hold(self, "qkv_proj", qkv_format, q_size + 2 * kv_size, cfg.hidden_size, cuts=((q_size, kv_size), ()))
        hold(self, "o_proj", o_format, cfg.hidden_size, q_size, cuts=((), (q_size,) * (tp.size > 1)))
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
        qkv = self.formats["qkv_proj"].linear(ops, x, self.qkv_proj, self.qkv_proj_scales, self.qkv_bias)
        q, k, v = qkv.split(self.split, dim=-1)
        q = q.reshape(t, self.num_heads, self.head_dim)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)
        return ops.rope_store_kv(q, k, v.reshape(t, self.num_kv_heads, self.head_dim), positions, self.cos_sin,
                                 kv_cache[0], kv_cache[1], slot_mapping, self.q_norm, self.k_norm, self.eps)

    def attend(self, q: torch.Tensor, kv_cache: KVCache, meta: AttentionMetadata) -> torch.Tensor:
        return self.ops.paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale, sinks=self.sinks,
                                        window=self.window)

    def output(self, attn: torch.Tensor) -> torch.Tensor:
        o = self.formats["o_proj"].linear(self.ops, attn.reshape(attn.shape[0], -1), self.o_proj, self.o_proj_scales,
                                          self.o_bias)
        return self.tp.all_reduce(o)


class DenseMLP(nn.Module):
    """SwiGLU over this rank's slice of the intermediate dimension, one all-reduce."""

    def __init__(self, hidden: int, intermediate: int, ops: ModuleType, tp: TensorParallel,
                 gate_up_format: WeightFormat = UNQUANTIZED, down_format: WeightFormat = UNQUANTIZED) -> None:
        super().__init__()
        self.ops, self.tp = ops, tp
        hold(self, "gate_up_proj", gate_up_format, 2 * intermediate, hidden, cuts=((intermediate,), ()))
        hold(self, "down_proj", down_format, hidden, intermediate, cuts=((), (intermediate,) * (tp.size > 1)))

    def forward(self, x: torch.Tensor, expert_hits: torch.Tensor) -> torch.Tensor:
        ops, formats = self.ops, self.formats
        h = ops.silu_and_mul(formats["gate_up_proj"].linear(ops, x, self.gate_up_proj, self.gate_up_proj_scales))
        return self.tp.all_reduce(formats["down_proj"].linear(ops, h, self.down_proj, self.down_proj_scales))


class SparseMoE(nn.Module):
    """Softmax top-k router over SwiGLU experts; marks which experts its tokens touched.

    The router is replicated; every expert holds this rank's slice of its intermediate
    dimension (the TP-sharded fused MoE), so one all-reduce follows. GPT-OSS adds biases
    (router, gate | up, down) and the clamped SwiGLU. Quantized experts (MXFP4, FP8: `fmt`) hold
    their codes in w13 / w2 and their scales in w13_scales / w2_scales, which the fused MoE
    reads as it multiplies.
    """

    def __init__(self, cfg: ModelConfig, ops: ModuleType, moe_index: int, tp: TensorParallel,
                 layout: ShardLayout, biases: bool = False, fmt: WeightFormat = UNQUANTIZED) -> None:
        super().__init__()
        self.ops, self.moe_index, self.tp = ops, moe_index, tp
        self.top_k, self.renormalize = cfg.top_k, cfg.norm_topk_prob
        self.num_experts = e = cfg.num_experts
        h, i = cfg.hidden_size, layout.moe_intermediate_size
        self.gate = nn.Parameter(torch.empty(e, h))
        self.gate_bias = nn.Parameter(torch.empty(e)) if biases else None
        self.fmt = fmt
        hold(self, "w13", fmt, 2 * i, h, experts=e, cuts=((i,), ()))
        hold(self, "w2", fmt, h, i, experts=e, cuts=((), (i,) * (tp.size > 1)))
        self.w13_bias = nn.Parameter(torch.empty(e, 2 * i)) if biases else None
        self.w2_bias = nn.Parameter(torch.empty(e, h)) if biases and tp.rank == 0 else None
        self.swiglu = (cfg.swiglu_alpha, cfg.swiglu_limit) if cfg.swiglu_limit is not None else None
        self.prepared = None  # an optional library's copy of the experts (prepare_library_)

    def forward(self, x: torch.Tensor, expert_hits: torch.Tensor) -> torch.Tensor:
        weights, ids = self.ops.route_topk(F.linear(x, self.gate, self.gate_bias), self.top_k, self.renormalize,
                                           expert_hits[self.moe_index])
        return self.tp.all_reduce(self.ops.fused_moe(
            x, self.w13, self.w2, weights, ids, b13=self.w13_bias, b2=self.w2_bias,
            w13_scales=self.w13_scales, w2_scales=self.w2_scales, swiglu=self.swiglu, prepared=self.prepared))

    def prepare_library_(self) -> None:
        """The experts in the layout of an optional MoE library (FlashInfer's, where the engine's `moe`
        choice gives it token counts on this GPU), made from the loaded weights before the formats'
        post_load re-lays them out for our kernel, which keeps its copy as the fallback."""
        self.prepared = self.ops.prepare_experts(self.w13, self.w13_scales, self.w2, self.w2_scales,
                                                 self.w13_bias, self.w2_bias, self.swiglu)

    def dequantize_(self) -> None:
        """Replaces quantized experts by dense ones in the model dtype (the load-time fallback), expert by expert."""
        if not self.fmt.quantized:
            return
        dtype = self.gate.dtype
        for name in ("w13", "w2"):
            codes, scales = getattr(self, name), getattr(self, name + "_scales")
            dense = torch.stack([self.fmt.dequantize(c, s, dtype) for c, s in zip(codes, scales)])
            setattr(self, name, nn.Parameter(dense, requires_grad=False))
            setattr(self, name + "_scales", None)
            self.formats[name] = UNQUANTIZED
        self.fmt = UNQUANTIZED

    def expert_bytes(self) -> int:
        """Bytes of one whole expert's weights as held (every rank's slice), what each expert its tokens
        touch costs to read: 3 H I values at the dtype's size, 1 byte (FP8) or 4.25 bits (MXFP4) a value
        plus their scales."""
        held = self.fmt.nbytes(self.w13, self.w13_scales) + self.fmt.nbytes(self.w2, self.w2_scales)
        return held // self.num_experts * self.tp.size


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

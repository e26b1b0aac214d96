"""Reference implementations of the model's ops in plain torch.

These run on any device and define the semantics that the Triton kernels in
`kernels/` must reproduce; the kernel tests compare against them.
"""
from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import torch
import torch.nn.functional as F

from laminar.ops.metadata import AttentionMetadata


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension, computed in fp32 like HF."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual): the pre-norm residual step."""
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary embedding. q: [T, Hq, D], k: [T, Hk, D], cos_sin: [max_pos, D] (cos | sin halves)."""
    half = q.shape[-1] // 2
    cs = cos_sin[positions].unsqueeze(1)
    cos, sin = cs[..., :half], cs[..., half:]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Writes new keys/values into the paged cache ([num_blocks, block_size, Hk, D]) at flat slots."""
    k_cache.view(-1, *k_cache.shape[2:])[slot_mapping] = k.to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slot_mapping] = v.to(v_cache.dtype)


def rope_store_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    q_norm: torch.Tensor | None = None, k_norm: torch.Tensor | None = None, eps: float = 0.0,
) -> torch.Tensor:
    """Attention's steps between the qkv projection and attention: per-head RMSNorm of q and k with
    q_norm / k_norm (Qwen3's qk_norm; none without weights), rope, and k, v into the paged cache at
    slot_mapping (store_kv). Returns the rotated queries. One op, so that a kernel may do it in one pass."""
    return rope_store_kv_from(sys.modules[__name__], q, k, v, positions, cos_sin, k_cache, v_cache, slot_mapping,
                              q_norm, k_norm, eps)


def rope_store_kv_from(
    parts: ModuleType | SimpleNamespace, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
    cos_sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
    q_norm: torch.Tensor | None = None, k_norm: torch.Tensor | None = None, eps: float = 0.0,
) -> torch.Tensor:
    """rope_store_kv as its separate steps, each taken from `parts` (these references, or the separate
    kernels: the unfused path that the fused kernel is measured against)."""
    if q_norm is not None:
        q, k = parts.rms_norm(q, q_norm, eps), parts.rms_norm(k, k_norm, eps)
    q, k = parts.rope(q, k, positions, cos_sin)
    parts.store_kv(k, v, k_cache, v_cache, slot_mapping)
    return q


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sinks: torch.Tensor | None = None,
    window: int = 0,
) -> torch.Tensor:
    """Causal attention of each sequence's new queries over its whole paged context.

    The new tokens' keys must already be in the cache. Query i of a sequence with
    q_len new tokens and seq_len context sits at position seq_len - q_len + i.
    `window` > 0 limits each query to the `window` most recent keys, itself included
    (key position > query position - window), as HF's sliding-window layers do.
    `sinks` (fp32 [num_q_heads]) adds one learned logit per head to the softmax
    denominator only (GPT-OSS): its probability mass is dropped, so rows sum below 1.
    """
    out = torch.empty_like(q)
    block_size = k_cache.shape[1]
    num_q_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    starts = meta.query_start_loc.tolist()
    seq_lens = meta.seq_lens.tolist()
    for b, seq_len in enumerate(seq_lens):
        q_start, q_end = starts[b], starts[b + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        num_blocks = (seq_len + block_size - 1) // block_size
        blocks = meta.block_tables[b, :num_blocks].long()
        k = k_cache[blocks].flatten(0, 1)[:seq_len]
        v = v_cache[blocks].flatten(0, 1)[:seq_len]
        k = k.repeat_interleave(num_q_heads // num_kv_heads, dim=1).transpose(0, 1).float()
        v = v.repeat_interleave(num_q_heads // num_kv_heads, dim=1).transpose(0, 1).float()
        qb = q[q_start:q_end].transpose(0, 1).float()
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        mask = k_pos <= q_pos[:, None]
        if window > 0:
            mask &= k_pos > q_pos[:, None] - window
        out[q_start:q_end] = _attend(qb, k, v, mask, scale, sinks).transpose(0, 1).to(q.dtype)
    return out


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float, sinks: torch.Tensor | None
) -> torch.Tensor:
    """Masked softmax attention per head ([H, Tq, D] x [H, Tk, D]); a sink joins the denominator only."""
    if sinks is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    logits = (q @ k.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    sink = sinks.float().view(-1, 1, 1).expand(-1, logits.shape[1], 1)
    probs = torch.softmax(torch.cat((logits, sink), dim=-1), dim=-1)[..., :-1]
    return probs @ v


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation on [.., 2*I] laid out as gate | up."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def clamped_swiglu(x: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """GPT-OSS's expert activation on [.., 2*I] laid out as gate | up (the checkpoint interleaves
    them; the loader splits them into halves): the gate is clamped from above and the up
    projection on both sides at `limit`, then (up + 1) * gate * sigmoid(alpha * gate)."""
    gate, up = x.chunk(2, dim=-1)
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * gate * torch.sigmoid(gate * alpha)


# e2m1 code -> value: bit 3 is the sign, bits 2-1 the exponent, bit 0 the mantissa.
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """MXFP4 as OpenAI's release stores it -> [..., N, K] in `dtype` (exact: 4-bit values times powers of two).

    blocks: uint8 [..., N, K/32, 16], two e2m1 codes per byte, the low nibble first in K order;
    scales: uint8 [..., N, K/32], e8m0 exponents (bias 127), one per 32 consecutive values of a row.
    """
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    codes = torch.stack(((blocks & 0x0F).long(), (blocks >> 4).long()), dim=-1)  # [..., N, G, 16, 2]
    values = lut[codes].flatten(-2) * torch.exp2(scales.float() - 127.0).unsqueeze(-1)  # [..., N, G, 32]
    return values.flatten(-2).to(dtype)


FP8_MAX = 448.0  # the largest finite float8_e4m3fn


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """FP8 (float8_e4m3fn) weights [..., N, K] -> `dtype`, by the shape of their float32 scales.

    scale [..., ceil(N/bn), ceil(K/bk)]: one per bn x bk block (Qwen3-FP8 / DeepSeek
    `weight_scale_inv`, 128 x 128), the block size read off the two shapes;
    scale [..., N] or [..., N, 1]: one per output channel (compressed-tensors `weight_scale`).
    """
    w = weight.float()
    n, k = w.shape[-2:]
    if scale.ndim == w.ndim and scale.shape[-2:] != (n, 1):
        bn, bk = _block_size(n, scale.shape[-2]), _block_size(k, scale.shape[-1])
        full = scale.float().repeat_interleave(bn, dim=-2).repeat_interleave(bk, dim=-1)
        return (w * full[..., :n, :k]).to(dtype)
    return (w * scale.float().reshape(*w.shape[:-1], 1)).to(dtype)


def _block_size(size: int, blocks: int) -> int:
    """The block length that cuts `size` into `blocks` blocks, the last one possibly partial.

    Checkpoint blocks are powers of two (128): 160 columns in 2 blocks are 128 + 32, not 80 + 80.
    At most one power of two fits (the candidates span less than a factor of two); none fitting,
    the blocks are taken as equal.
    """
    even = -(-size // blocks)
    pow2 = 1 << (even - 1).bit_length()
    return pow2 if -(-size // pow2) == blocks else even


def quantize_fp8(weight: torch.Tensor, block: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of dequantize_fp8 up to rounding: absmax scales per block (or per row if block is None).

    Builds FP8 test checkpoints and dummy weights; returns (float8_e4m3fn weight, float32 scale).
    """
    w = weight.float()
    n, k = w.shape[-2:]
    if block is None:
        scale = w.abs().amax(dim=-1).clamp(min=1e-12) / FP8_MAX
        return (w / scale[..., None]).to(torch.float8_e4m3fn), scale
    bn, bk = block
    padded = torch.nn.functional.pad(w, (0, -k % bk, 0, -n % bn))
    tiles = padded.unflatten(-1, (-1, bk)).unflatten(-3, (-1, bn))  # [..., N/bn, bn, K/bk, bk]
    scale = tiles.abs().amax(dim=(-3, -1)).clamp(min=1e-12) / FP8_MAX
    full = scale.repeat_interleave(bn, dim=-2).repeat_interleave(bk, dim=-1)[..., :n, :k]
    return (w / full).to(torch.float8_e4m3fn), scale


def route_topk(
    router_logits: torch.Tensor, top_k: int, renormalize: bool, hits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax router: returns (weights [T, k] fp32, expert ids [T, k] int64), and sets hits[id] (bool
    [E], where given) for every picked expert: which experts the step reads (one op, so a kernel may
    mark them as it picks them instead of launching a fill).

    With renormalize this is also GPT-OSS's router (a softmax over the top-k logits alone):
    softmax is monotonic, so both pick the same experts, and renormalised probabilities equal
    the softmax of the picked logits.
    """
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if hits is not None:
        hits.index_fill_(0, ids.flatten(), True)
    return weights, ids


def prepare_experts(
    w13: torch.Tensor, w13_scales: torch.Tensor | None, w2: torch.Tensor, w2_scales: torch.Tensor | None,
    b13: torch.Tensor | None = None, b2: torch.Tensor | None = None, swiglu: tuple[float, float] | None = None,
) -> None:
    """An optional library's own copy of one layer's experts, made at load (laminar_kernels.prepare_experts:
    FlashInfer's MoE); the reference computes from the weights themselves, so none."""
    return None


def fused_moe(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
    b13: torch.Tensor | None = None, b2: torch.Tensor | None = None,
    w13_scales: torch.Tensor | None = None, w2_scales: torch.Tensor | None = None,
    swiglu: tuple[float, float] | None = None, prepared: object | None = None,
) -> torch.Tensor:
    """Mixture of SwiGLU experts. x: [T, H], w13: [E, 2I, H] (gate | up), w2: [E, H, I].

    Optional (GPT-OSS): biases b13 [E, 2I] and b2 [E, H], added before the activation and before
    the routing weight; MXFP4 weights (w13 / w2 are then uint8 blocks [E, N, K/32, 16] with
    w13_scales / w2_scales [E, N, K/32], see dequantize_mxfp4); FP8 weights (float8_e4m3fn w13 / w2
    with float32 block or channel scales, see dequantize_fp8); swiglu = (alpha, limit) selects
    clamped_swiglu instead of silu_and_mul. `prepared` is what prepare_experts returned (always None
    here; the kernels' copy of the experts for an optional library) and changes nothing.
    """
    def weight(w: torch.Tensor, scales: torch.Tensor | None, expert: int) -> torch.Tensor:
        if scales is None:
            return w[expert]
        if w.dtype == torch.float8_e4m3fn:
            return dequantize_fp8(w[expert], scales[expert], x.dtype)
        return dequantize_mxfp4(w[expert], scales[expert], x.dtype)

    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    flat_ids = topk_ids.flatten()
    token_idx = torch.arange(x.shape[0], device=x.device).repeat_interleave(topk_ids.shape[1])
    flat_w = topk_weights.flatten().float()
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=w13.shape[0]).tolist()
    start = 0
    for expert, n in enumerate(counts):
        if n == 0:
            continue
        sel = order[start : start + n]
        start += n
        tok = token_idx[sel]
        gate_up = x[tok] @ weight(w13, w13_scales, expert).t()
        if b13 is not None:
            gate_up = gate_up + b13[expert]
        h = silu_and_mul(gate_up) if swiglu is None else clamped_swiglu(gate_up, *swiglu)
        y = h @ weight(w2, w2_scales, expert).t()
        if b2 is not None:
            y = y + b2[expert]
        out.index_add_(0, tok, y.float() * flat_w[sel, None])
    return out.to(x.dtype)

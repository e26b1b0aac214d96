"""Fused MoE forward: align -> gated up-GEMM (activation fused) -> weighted down-GEMM -> top-k sum."""
from __future__ import annotations

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from . import flashinfer_moe
from .attention_libs import fail
from .common import device_sms, dot_precision, to_tl_dtype
from .fp8 import GROUP, quantize_rows, scale_block
from .moe_align import max_padded_rows, moe_align
from .moe_config import MXFP4_KERNEL_LAYOUT, get_config, weight_format
from .moe_gemm import moe_gemm_kernel
from .moe_gemm_tma import moe_gemm_tma_kernel
from .moe_mxfp4 import dequantize, launch_mxfp4_gemm, mxfp4_config
from .moe_reduce import topk_sum


def _descriptor(t: torch.Tensor, block: list[int]) -> TensorDescriptor:
    """TMA descriptor over a 2-D row-major view (rows must be 16-byte multiples, as TMA requires)."""
    assert t.shape[-1] * t.element_size() % 16 == 0, f"rows of {t.shape[-1]} elements are not 16-byte multiples"
    return TensorDescriptor.from_tensor(t, block)


def _launch_gemm(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, weights: torch.Tensor, align: tuple, n_valid: int,
    max_rows: int, block_m: int, cfg: dict, a_div: int, gated: bool, weighted: bool, sorted_act: bool,
    scales: torch.Tensor | None = None, bias: torch.Tensor | None = None, swiglu: tuple[float, float] | None = None,
    a_scales: torch.Tensor | None = None, c_scales: torch.Tensor | None = None,
) -> None:
    """One projection: b dense [E, N, K], MXFP4 blocks [E, N, K/32, 16] with scales [E, N, K/32], or
    FP8 [E, N, K] with block or channel scales (kernels.fp8.scale_block).
    MXFP4 in the kernel form of kernels.mxfp4_layout (b 3-D) goes to kernels.moe_mxfp4.

    The gated (up) projection gathers token rows of a; the other (down) scatters c to token*top_k
    rows. sorted_act (dense weights only) takes kernels.moe_gemm_tma: the activation between the
    two in sorted order, written and read through TMA, weights through TMA. FP8 a (W8A8) comes with
    its 128-group scales a_scales; an FP8 c is written quantized with its scales into c_scales.
    """
    if b.dtype == torch.uint8 and b.dim() == 3:  # MXFP4 in kernels.mxfp4_layout's form
        launch_mxfp4_gemm(a, b, scales, c, weights, align, n_valid, max_rows, block_m, cfg, a_div, gated, weighted,
                          bias, swiglu)
        return
    sorted_ids, expert_ids, total = align
    n_out = b.shape[1] // 2 if gated else b.shape[1]
    fp8 = b.dtype == torch.float8_e4m3fn
    k_dim = b.shape[2] if scales is None or fp8 else scales.shape[2] * 32
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    tiles = triton.cdiv(max_rows, block_m) * triton.cdiv(n_out, bn)
    alpha, limit = swiglu or (1.0, 0.0)
    bias_arg, bias_stride = (b, 0) if bias is None else (bias, bias.stride(0))
    common = dict(A_DIV=a_div, GATED=gated, WEIGHTED=weighted, EVEN_K=k_dim % bk == 0, PRECISION=dot_precision(a.dtype),
                  HAS_BIAS=bias is not None, CLAMPED=swiglu is not None, BLOCK_M=block_m, BLOCK_N=bn, BLOCK_K=bk,
                  GROUP_M=cfg["GROUP_M"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if sorted_act:
        assert scales is None, "the TMA form reads dense weights only"
        per_sm = cfg.get("PERSISTENT", 0)
        moe_gemm_tma_kernel[(min(tiles, per_sm * device_sms(a)) if per_sm else tiles,)](
            a if gated else _descriptor(a, [block_m, bk]), _descriptor(b.view(-1, k_dim), [bn, bk]),
            _descriptor(c, [block_m, bn]) if gated else c, weights, sorted_ids, expert_ids, total, bias_arg,
            n_out, k_dim, n_valid, max_rows, alpha, limit, a.stride(0), a.stride(1), c.stride(0), bias_stride,
            A_SORTED=not gated, C_SORTED=gated, DTYPE=to_tl_dtype(c.dtype), PERSISTENT=bool(per_sm), **common,
        )
        return
    block = scale_block(b, scales) if fp8 else 0
    a8 = a.dtype == torch.float8_e4m3fn
    if fp8:
        assert b.stride(-1) == 1 and scales.stride(-1) == 1
        assert GROUP % bk == 0 or not a8 and bk % GROUP == 0, "FP8 K tiles divide 128 (W8A16: or span whole blocks)"
        assert not (block and gated and n_out % GROUP), "gate and up halves must start on a scale block"
        assert c.dtype != torch.float8_e4m3fn or bn % GROUP == 0, "a quantizing epilogue covers whole groups"
    elif scales is not None:
        assert bk % 32 == 0 and b.stride(-1) == 1 and b.stride(-2) == 16 and scales.stride(-1) == 1
    a_scales, c_scales = (a_scales if a_scales is not None else weights), (c_scales if c_scales is not None else weights)
    moe_gemm_kernel[(tiles,)](
        a, b, c, weights, sorted_ids, expert_ids, total, bias_arg, b if scales is None else scales, a_scales, c_scales,
        n_out, k_dim, n_valid, max_rows, alpha, limit,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), b.stride(-1), c.stride(0), c.stride(1),
        bias_stride, 0 if scales is None else scales.stride(0), 0 if scales is None else scales.stride(1),
        a_scales.stride(0), c_scales.stride(0),
        MXFP4=scales is not None and not fp8, FP8=fp8, A8=a8, SCALE_BLOCK=block, **common,
    )


def fused_moe(
    x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
    b13: torch.Tensor | None = None, b2: torch.Tensor | None = None,
    w13_scales: torch.Tensor | None = None, w2_scales: torch.Tensor | None = None,
    swiglu: tuple[float, float] | None = None, config: dict | None = None,
    prepared: flashinfer_moe.Prepared | None = None,
) -> torch.Tensor:
    """Mixture of SwiGLU experts. x [T, H], w13 [E, 2I, H] (gate | up), w2 [E, H, I] -> [T, H].

    Same semantics as laminar.ops.torch_ops.fused_moe (biases, MXFP4 blocks with their scales, in
    the release's form or kernels.mxfp4_layout's (3-D w13 / w2), FP8 weights with block or channel
    scales, the clamped SwiGLU). `config` overrides the table lookup (the tuner uses it). Where the
    config says "TMA" (tuned prefill rows; dense weights) the activation between the GEMMs is kept
    in expert-sorted order, padding rows included (max_padded_rows x I), so that the down GEMM reads
    it as contiguous tiles (kernels.moe_gemm_tma); otherwise it is in token*top_k order. FP8 rows with "A8" run W8A8
    (kernels.fp8): x is quantized per token and 128-group once, and the up GEMM writes the
    activation already quantized for the down GEMM; without it, W8A16. A "DEQUANT" config (MXFP4 in
    the kernel form, prefill-sized steps: kernels.moe_mxfp4.mxfp4_config) writes the experts out in
    x's dtype and runs the 16-bit path over them with its own table.
    `prepared` (kernels.flashinfer_moe.prepare, at load) is the same experts in FlashInfer's form:
    FlashInfer serves the token counts it was prepared for; if it raises, it is switched off with one
    warning and this call and every later one run ours.
    """
    n_tok, hidden = x.shape
    n_experts, inter = w13.shape[0], w13.shape[1] // 2
    top_k = topk_ids.shape[1]
    if n_tok == 0:
        return torch.empty_like(x)
    if prepared is not None and prepared.serves(n_tok):
        try:
            return flashinfer_moe.fused_moe(x, topk_weights, topk_ids, prepared)
        except Exception as exc:  # a JIT build or a shape it rejects: ours serve instead
            fail(flashinfer_moe.NAME, exc)
    x = x if x.stride(-1) == 1 else x.contiguous()
    fmt = weight_format(w13)
    if config is None and fmt == MXFP4_KERNEL_LAYOUT:
        config = mxfp4_config(n_tok, top_k, n_experts, hidden, inter, x.dtype, x.device)
    if config is not None and config.get("DEQUANT"):  # MXFP4 kernel form, a prefill-sized step
        return fused_moe(x, dequantize(w13, w13_scales, hidden, x.dtype), dequantize(w2, w2_scales, inter, x.dtype),
                         topk_weights, topk_ids, b13, b2, swiglu=swiglu)
    cfg = config or get_config(n_tok, top_k, n_experts, hidden, inter, x.dtype, x.device, fmt)
    block_m = cfg["BLOCK_M"]
    n_valid = n_tok * top_k
    max_rows = max_padded_rows(n_valid, n_experts, block_m)
    align = moe_align(topk_ids, n_experts, block_m)
    weights = topk_weights.reshape(-1).float().contiguous()
    sorted_act = bool(cfg.get("TMA")) and w13_scales is None
    a8 = fmt == "FP8" and bool(cfg.get("A8"))
    a, a_scales = quantize_rows(x) if a8 else (x, None)
    act = torch.empty((max_rows if sorted_act else n_valid, inter), dtype=torch.float8_e4m3fn if a8 else x.dtype,
                      device=x.device)
    act_scales = torch.empty((n_valid, triton.cdiv(inter, GROUP)), dtype=torch.float32, device=x.device) if a8 else None
    _launch_gemm(a, w13, act, weights, align, n_valid, max_rows, block_m, cfg["up"], top_k, True, False, sorted_act,
                 w13_scales, b13, swiglu, a_scales, act_scales)
    partial = torch.empty((n_valid, hidden), dtype=x.dtype, device=x.device)
    _launch_gemm(act, w2, partial, weights, align, n_valid, max_rows, block_m, cfg["down"], 1, False, True, sorted_act,
                 w2_scales, b2, a_scales=act_scales)
    return topk_sum(partial, n_tok, top_k)

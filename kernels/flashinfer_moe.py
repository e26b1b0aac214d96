"""FlashInfer's SM90 CUTLASS MXFP4 x BF16 fused MoE, beside our Triton kernel (kernels.moe_mxfp4).

FlashInfer (0.6.13) runs TensorRT-LLM's W4A16 MoE on Hopper: a mixed-input CUTLASS grouped GEMM that
upcasts the packed e2m1 weights after loading them, the same idea as ours with its own tiles and
scheduling. perf/bench_moe_mxfp4.py times it beside ours; it serves the MoE token counts that
kernels/configs/moe.json lists for this GPU (the engine's `moe` argument can name it for every
size, or never), and our kernel stays the portable default and the fallback: a failed import, load
or call switches it off for the process with one warning (attention_libs, as for FlashInfer's
attention) and the call is served by ours. flashinfer-python ships this module as CUDA sources:
its first use compiles it with nvcc (over 330 s on a 16-core H100 machine, 2026-12-07) into
FlashInfer's JIT cache, at the engine's start, unless that cache (or FlashInfer's JIT-cache
package) already holds it.

Its operands differ from the release's form (laminar.formats.mxfp4) in four ways, all set up once
at load by prepare(), which holds its copy beside the Triton layout (the fallback needs that one):
- fc1 is [up | gate]: its activation reads the gate from the second half (ours: gate | up), and it
  computes min(gate, L) * sigmoid(alpha * min(gate, L)) * (clamp(up, -L, L) + beta), GPT-OSS's
  clamped SwiGLU with beta = 1 (per-expert fp32 alpha, beta, limit);
- K and N are padded to multiples of ALIGN (its scales pack four 32-value groups of a row into one
  int32), with zero codes and zero biases, so padded channels contribute exactly 0: GPT-OSS-20B's
  2880 becomes 2944 (2% more weight bytes), hidden rows are padded per call and the output sliced;
- weights are [E, N, K/2] bytes, low nibble first in K order (the release's blocks flattened), then
  shuffled by FlashInfer's own interleave for the SM90 mixed GEMM (a CUDA kernel of its module);
- scales [E, N, K/32] become [E, K/128, 4N]: the four groups of each row's 128-value K step side by
  side (interleave_scales); biases are in the activation dtype, the down bias zeros on the TP
  ranks that hold none (it takes both biases or neither).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .attention_libs import fail, failed, imported, table

NAME = "flashinfer_moe"  # its name in attention_libs: switched off apart from FlashInfer's attention
TABLE = Path(__file__).parent / "configs" / "moe.json"
ALIGN = 128  # K and N multiples: four 32-value scale groups per int32 of the interleaved scales
GROUP = 32  # values per e8m0 scale
DTYPES = (torch.bfloat16, torch.float16)  # its W4A16 runners' activation types


class Relayout(NamedTuple):
    """One layer's experts in FlashInfer's order and padding, before its weight interleave."""

    w13: torch.Tensor  # uint8 [E, 2Ip, Hp/2], up rows then gate rows
    s13: torch.Tensor  # uint8 [E, Hp/128, 2Ip * 4]
    w2: torch.Tensor  # uint8 [E, Hp, Ip/2]
    s2: torch.Tensor  # uint8 [E, Ip/128, Hp * 4]
    b13: torch.Tensor | None  # [E, 2Ip], up then gate
    b2: torch.Tensor | None  # [E, Hp]


@dataclass(frozen=True)
class Prepared:
    """One MoE layer's experts as FlashInfer reads them, and the token counts it serves them for."""

    w13: torch.Tensor
    w2: torch.Tensor
    scales: list[torch.Tensor]  # [fc1, fc2] interleaved scales viewed as int32, its quant_scales
    b13: torch.Tensor | None
    b2: torch.Tensor | None
    swiglu: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # fp32 [E] alpha, beta (1), limit
    hidden: int
    ranges: tuple[tuple[int, int], ...]

    def serves(self, n_tok: int) -> bool:
        """Whether FlashInfer takes a call of this many tokens (and has not failed in this process)."""
        return NAME not in failed() and any(lo <= n_tok <= hi for lo, hi in self.ranges)


def token_ranges(choice: str, device: torch.device) -> tuple[tuple[int, int], ...]:
    """The MoE token counts FlashInfer serves: every one for "flashinfer", none for "triton" or off a
    GPU, this GPU's measured winning ranges (kernels/configs/moe.json) for "auto"."""
    if choice == "triton" or device.type != "cuda":
        return ()
    if choice == "flashinfer":
        return ((1, sys.maxsize),)
    gpus = table(TABLE)
    entry = gpus.get(torch.cuda.get_device_name(device), gpus["default"])
    return tuple((int(lo), int(hi)) for lo, hi in entry.get("flashinfer", []))


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def interleave_scales(scales: torch.Tensor) -> torch.Tensor:
    """[E, N, G] e8m0 -> [E, G/4, 4N]: row n's groups 4j..4j+3 side by side at [e, j, 4n:4n+4], so one
    int32 load gives a row its scales for 128 values of K (FlashInfer's interleave_moe_scales_for_sm90_mixed_gemm)."""
    e, n, g = scales.shape
    return scales.reshape(e, n, g // 4, 4).transpose(1, 2).reshape(e, g // 4, 4 * n).contiguous()


def _padded(blocks: torch.Tensor, scales: torch.Tensor, rows: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Release blocks [E, N, K/32, 16] and scales [E, N, K/32] -> bytes [E, rows, k/2] and scales
    [E, rows, k/32], zeros in the padding (zero codes are 0 at any scale; e8m0 0 is 2^-127, not NaN)."""
    e, n, groups, _ = blocks.shape
    packed = F.pad(blocks.reshape(e, n, groups * 16), (0, k // 2 - groups * 16, 0, rows - n))
    return packed, F.pad(scales, (0, k // GROUP - groups, 0, rows - n))


def _up_gate(t: torch.Tensor, inter: int, rows: int) -> torch.Tensor:
    """Our gate | up halves along dim 1 -> up | gate, each zero-padded from inter to rows."""
    pad = [0, 0] * (t.dim() - 2) + [0, rows - inter]
    return torch.cat([F.pad(half, pad) for half in (t[:, inter:], t[:, :inter])], dim=1)


def relayout(w13: torch.Tensor, s13: torch.Tensor, w2: torch.Tensor, s2: torch.Tensor,
             b13: torch.Tensor | None, b2: torch.Tensor | None, dtype: torch.dtype) -> Relayout:
    """The release form (w13 gate | up, [E, 2I, H/32, 16]; w2 [E, H, I/32, 16]; scales [..., K/32])
    in FlashInfer's row order and padding, in plain torch (any device)."""
    inter, hidden = w13.shape[1] // 2, w13.shape[2] * GROUP
    ip, hp = _round_up(inter), _round_up(hidden)
    fc1, fc1_scales = (_up_gate(t, inter, ip) for t in _padded(w13, s13, 2 * inter, hp))
    fc2, fc2_scales = _padded(w2, s2, hp, ip)
    if b13 is not None and b2 is None:  # a TP rank other than 0: FlashInfer takes both biases or neither
        b2 = torch.zeros(w2.shape[0], hidden, dtype=dtype, device=w2.device)
    return Relayout(fc1, interleave_scales(fc1_scales), fc2, interleave_scales(fc2_scales),
                    None if b13 is None else _up_gate(b13.to(dtype), inter, ip),
                    None if b2 is None else F.pad(b2.to(dtype), (0, hp - hidden)))


def _hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


def prepare(w13: torch.Tensor, w13_scales: torch.Tensor | None, w2: torch.Tensor, w2_scales: torch.Tensor | None,
            b13: torch.Tensor | None = None, b2: torch.Tensor | None = None,
            swiglu: tuple[float, float] | None = None, choice: str = "auto") -> Prepared | None:
    """One layer's release-form MXFP4 experts (laminar.formats.mxfp4, before its post_load) in FlashInfer's
    form, at load; None where FlashInfer will not serve them: the choice gives it no token counts on
    this GPU, not Hopper, experts not MXFP4, an fp32 model, FlashInfer missing or failing here."""
    dtype = b13.dtype if b13 is not None else torch.bfloat16
    ranges = token_ranges(choice, w13.device)
    if not ranges or w13.dtype != torch.uint8 or w13.dim() != 4 or dtype not in DTYPES or not _hopper(w13.device):
        return None
    lib = imported(NAME)
    if lib is None:
        return None
    try:
        r = relayout(w13, w13_scales, w2, w2_scales, b13, b2, dtype)
        weights = [lib.interleave_moe_weights_for_sm90_mixed_gemm(w, "fp4") for w in (r.w13, r.w2)]
    except Exception as exc:  # its module's JIT build or a shape it rejects: ours serve
        fail(NAME, exc)
        return None
    return Prepared(
        w13=weights[0], w2=weights[1], scales=[r.s13.view(torch.int32), r.s2.view(torch.int32)], b13=r.b13, b2=r.b2,
        swiglu=None if swiglu is None else _swiglu_params(swiglu, w13.shape[0], w13.device),
        hidden=w2.shape[1], ranges=ranges)


def _swiglu_params(swiglu: tuple[float, float], experts: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, limit) -> its per-expert fp32 alpha, beta and limit; beta = 1 is GPT-OSS's (up + 1)."""
    alpha, limit = swiglu
    return tuple(torch.full((experts,), v, dtype=torch.float32, device=device) for v in (alpha, 1.0, limit))


def fused_moe(hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
              prepared: Prepared) -> torch.Tensor:
    """laminar.ops.torch_ops.fused_moe over prepared experts: x [T, H] (bf16 or fp16) -> [T, H].

    Raises what FlashInfer raises; kernels.fused_moe turns that into our kernel and one warning."""
    lib = imported(NAME)
    if lib is None:
        raise RuntimeError("FlashInfer's fused MoE is not available")
    h, hp = prepared.hidden, prepared.w2.shape[1]
    x = F.pad(hidden, (0, hp - h)) if hp != h else hidden.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    alpha, beta, limit = prepared.swiglu or (None, None, None)
    lib.cutlass_fused_moe(
        x, topk_ids.to(torch.int32).contiguous(), topk_weights.float().contiguous(), prepared.w13, prepared.w2,
        x.dtype, quant_scales=prepared.scales, fc1_expert_biases=prepared.b13, fc2_expert_biases=prepared.b2,
        swiglu_alpha=alpha, swiglu_beta=beta, swiglu_limit=limit, use_w4_group_scaling=True, output=out)
    return out[:, :h].contiguous() if hp != h else out

"""Triton kernels for Laminar's ops; same names, signatures and semantics as laminar.ops.torch_ops."""
from .interpreter_compat import patch_interpreter_bf16_dot

patch_interpreter_bf16_dot()

from .activation import silu_and_mul  # noqa: E402
from .attention import paged_attention
from .flashinfer_moe import prepare as prepare_experts
from .fp8_linear import fp8_linear
from .fused_moe import fused_moe
from .kv_cache import store_kv
from .norm import add_rms_norm, rms_norm
from .rope import rope
from .rope_kv import rope_store_kv
from .routing import route_topk

__all__ = [
    "rms_norm", "add_rms_norm", "rope", "store_kv", "rope_store_kv", "paged_attention", "silu_and_mul", "route_topk", "fused_moe",
    "prepare_experts", "fp8_linear",
]

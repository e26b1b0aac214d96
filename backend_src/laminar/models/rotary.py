"""The cos | sin table of neox-style RoPE, plain or YaRN-scaled, indexed by position."""
from __future__ import annotations

import math

import torch
from torch import nn

from laminar.config import Yarn


def _wavelengths(head_dim: int, theta: float) -> torch.Tensor:
    return theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)


def yarn_inv_freq(head_dim: int, theta: float, yarn: Yarn) -> tuple[torch.Tensor, float]:
    """YaRN's frequencies and cos/sin scale, as transformers computes them (`_compute_yarn_parameters`).

    Dimensions that turn fewer than beta_slow times over the original context are interpolated
    (divided by `factor`), those that turn more than beta_fast times are kept, and a linear ramp
    blends the ones between; the attention factor 0.1 ln(factor) + 1 rescales cos and sin.
    """
    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(yarn.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(yarn.beta_fast), correction_dim(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width would divide by zero
    kept = 1 - ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    wavelengths = _wavelengths(head_dim, theta)
    inv_freq = 1.0 / (yarn.factor * wavelengths) * (1 - kept) + 1.0 / wavelengths * kept
    scale = yarn.attention_factor
    if scale is None:
        scale = 0.1 * math.log(yarn.factor) + 1.0 if yarn.factor > 1 else 1.0
    return inv_freq, scale


class RotaryCache(nn.Module):
    """cos | sin table for neox-style RoPE, indexed by position (YaRN-scaled when `yarn` is given)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, yarn: Yarn | None = None) -> None:
        super().__init__()
        inv_freq, scale = yarn_inv_freq(head_dim, theta, yarn) if yarn else (1.0 / _wavelengths(head_dim, theta), 1.0)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        table = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
        self.register_buffer("cos_sin", table * scale if yarn else table, persistent=False)

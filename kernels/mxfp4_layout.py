"""MXFP4 experts re-laid out once at load for kernels.moe_mxfp4 (and back, for the round-trip test).

The release stores byte j of a 32-value group as values 2j (low nibble) and 2j + 1 (high nibble),
so a kernel must interleave the two decoded halves before its dot: a register shuffle per weight.
Here each row's K axis is cut into tiles of TILE_K = 64 values (32 bytes) and byte j of a tile
holds value j in its low nibble and value 32 + j in its high nibble: the low nibbles of a tile are
scale group 2t and the high nibbles group 2t + 1, each in K order, so decoding is elementwise and
each half meets its own 32 columns of the activations in its own dot. K is padded with zero codes
to a whole tile. Scales are stored transposed, [E, K/32, N], so one group's scales for a block of
rows are one contiguous load.

Kernel form: values uint8 [E, N, Kp/2] (3-D, which is how fused_moe tells it from the release's
4-D blocks) and scales uint8 [E, Kp/32, N], Kp = K rounded up to TILE_K.
"""
from __future__ import annotations

import torch
from torch import nn

TILE_K = 64  # values per layout tile: two scale groups, 32 bytes of a row


def to_kernel_layout(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Release form (blocks [..., N, K/32, 16], scales [..., N, K/32]) -> kernel form (see the module doc)."""
    *lead, n, groups, _ = blocks.shape
    k_pad = -(-groups * 32 // TILE_K) * TILE_K
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).reshape(*lead, n, groups * 32)  # K order
    codes = nn.functional.pad(codes, (0, k_pad - groups * 32)).reshape(*lead, n, k_pad // TILE_K, 2, TILE_K // 2)
    values = (codes[..., 0, :] | (codes[..., 1, :] << 4)).reshape(*lead, n, k_pad // 2)
    scales = nn.functional.pad(scales, (0, k_pad // 32 - groups)).transpose(-1, -2).contiguous()
    return values, scales


def from_kernel_layout(values: torch.Tensor, scales: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact inverse of to_kernel_layout for a K of k values (padding dropped)."""
    *lead, n, half = values.shape
    tiles = values.reshape(*lead, n, half * 2 // TILE_K, 1, TILE_K // 2)
    codes = torch.cat((tiles & 0x0F, tiles >> 4), dim=-2).reshape(*lead, n, half * 2)[..., :k]
    pairs = codes.reshape(*lead, n, k // 32, 16, 2)
    blocks = pairs[..., 0] | (pairs[..., 1] << 4)
    return blocks, scales.transpose(-1, -2)[..., :k // 32].contiguous()

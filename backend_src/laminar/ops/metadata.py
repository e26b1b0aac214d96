"""Batch layout shared by the attention ops of every backend."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class AttentionMetadata:
    """Where each sequence's new tokens sit in the flat batch and where its context lives.

    query_start_loc: int32 [B + 1], prefix sums of new-token counts (cu_seqlens_q).
    seq_lens: int32 [B], context length per sequence, the new tokens included.
    block_tables: int32 [B, max_blocks], physical KV block ids (unused tail entries are 0).
    slot_mapping: int64 [T], flat cache slot of each new token (block * block_size + offset).
    max_query_len / max_seq_len: host-side maxima, so kernels can size grids without a sync.
    host: the same query_start_loc, seq_lens and block_tables as host arrays where the builder
    had them, for kernels planned on the host (FlashInfer) to read without a device sync.
    num_decodes: how many sequences at the front are decode rows (one query each): a step's rows
    are stacked decodes first (laminar.step_plan.stacked), and its builder says how many there
    are, so kernels that serve decodes apart (FlashInfer's) need not guess it from the lengths.
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    max_query_len: int
    max_seq_len: int
    host: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    num_decodes: int = 0

    @property
    def num_seqs(self) -> int:
        return self.seq_lens.shape[0]

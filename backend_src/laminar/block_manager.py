"""Paged KV-cache block allocation: a free list of fixed-size blocks."""
from __future__ import annotations

from laminar.sequence import Sequence


class BlockManager:
    """Hands out physical KV blocks to sequences and takes them back.

    Every path that ends a sequence (finish, abort, failure, preemption) calls
    free(), so the pool returns to full when the engine is idle.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Extra blocks for seq to hold num_tokens tokens in total."""
        have = len(seq.block_table)
        return max(0, -(-num_tokens // self.block_size) - have)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Extends seq's block table to hold num_tokens; caller checked can_grow."""
        for _ in range(self.blocks_needed(seq, num_tokens)):
            seq.block_table.append(self.free_blocks.pop())

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(reversed(seq.block_table))
        seq.block_table = []

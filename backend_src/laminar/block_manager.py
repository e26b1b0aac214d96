"""Paged KV-cache blocks: allocation, reference-counted sharing and the prefix cache.

A full block whose KV is complete in every layer is registered under a chain hash: SHA-256 of
its parent block's hash and its own token ids, so a hash names the whole prefix up to the
block's end (the same tokens after a different prefix hash differently). A false hit needs a
SHA-256 collision: with n blocks ever hashed the chance is about n^2 / 2^257, nil for any n a
server reaches, so hits are not re-checked against the tokens (vLLM's sha256 choice). Nothing
else changes a block's KV in one engine (one model, one dtype, positions fixed by the chain).

Blocks are shared by reference count. A block nobody references goes back to the pool: to
`free` when it holds no cached prefix, else to `evictable`, ordered least recently released
first. Allocation takes from `free` first and evicts the least recently used cached block only
when `free` is empty, so a cached prefix lives until the pool runs short; a block in use is
never evicted. The block map lives on rank 0 only: TP workers receive block tables.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from laminar.sequence import Sequence


def chain_hash(parent: bytes, token_ids: list[int]) -> bytes:
    return hashlib.sha256(parent + array("q", token_ids).tobytes()).digest()


class BlockManager:
    """Hands out physical KV blocks to sequences, shares cached ones, and takes them back.

    Every path that ends a sequence (finish, abort, failure, preemption) calls free(), so every
    block is back in the pool (free or evictable) when the engine is idle.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.free_blocks: list[int] = list(range(num_blocks - 1, -1, -1))  # hold no cached prefix
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached and unreferenced, LRU first
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # chain hash -> block holding that prefix's last block

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take: the free ones and the evictable cached ones."""
        return len(self.free_blocks) + len(self.evictable)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Extra blocks for seq to hold num_tokens tokens in total."""
        have = len(seq.block_table)
        return max(0, -(-num_tokens // self.block_size) - have)

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Extends seq's block table to hold num_tokens; caller checked can_grow."""
        for _ in range(self.blocks_needed(seq, num_tokens)):
            block = self._take()
            self.ref_counts[block] = 1
            seq.block_table.append(block)

    def reclaimable(self, seq: Sequence) -> int:
        """Blocks that freeing seq would return to the pool (those no other sequence holds)."""
        return sum(1 for block in seq.block_table if self.ref_counts[block] == 1)

    def free(self, seq: Sequence) -> None:
        """Releases seq's blocks, its last block first, so that a prefix outlives its extensions
        in the LRU order (a block is of no use once the block before it is evicted)."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.block_hash[block] is None:
                    self.free_blocks.append(block)
                else:
                    self.evictable[block] = None
        seq.block_table = []
        seq.num_registered_blocks = 0

    def lookup(self, seq: Sequence) -> list[int]:
        """Cached blocks holding seq's first tokens, in order: full blocks only, and never the last
        token, which must be computed for its logits. Changes nothing."""
        if not self.enable_caching:
            return []
        hits = []
        for h in self._hashes(seq, (seq.num_tokens - 1) // self.block_size):
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def admission_cost(self, hits: list[int], num_tokens: int) -> int:
        """Pool blocks that admitting a sequence with these hits and growing it to num_tokens takes:
        its new blocks, plus the hits that are evictable now (sharing them takes them off the pool)."""
        new = max(0, -(-num_tokens // self.block_size) - len(hits))
        return new + sum(1 for block in hits if self.ref_counts[block] == 0)

    def admit(self, seq: Sequence, hits: list[int]) -> None:
        """Starts seq's block table with cached blocks (seq holds none), taking a reference on each."""
        for block in hits:
            self.ref_counts[block] += 1
            self.evictable.pop(block, None)
        seq.block_table = list(hits)
        seq.num_registered_blocks = len(hits)

    def register(self, seq: Sequence) -> None:
        """Caches seq's full blocks among its first num_computed tokens: callers call it only once
        those tokens' KV is complete in every layer, so no request can hit a block still being
        written (with asynchronous scheduling: once it is queued ahead of any step that reads it).
        A pending token (still on the device) is not hashed: its block waits until it is known.
        A prefix already cached under another block keeps that block."""
        if not self.enable_caching:
            return
        full = min(seq.num_computed, seq.num_tokens - seq.num_pending) // self.block_size
        if full <= seq.num_registered_blocks:
            return
        hashes = self._hashes(seq, full)
        for i in range(seq.num_registered_blocks, full):
            block = seq.block_table[i]
            if self.block_hash[block] is None and hashes[i] not in self.cached:
                self.cached[hashes[i]] = block
                self.block_hash[block] = hashes[i]
        seq.num_registered_blocks = full

    def _hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """seq's chain hashes of its first num_blocks blocks (computed once per block: tokens only append)."""
        hashes, bs = seq.block_hashes, self.block_size
        for i in range(len(hashes), num_blocks):
            hashes.append(chain_hash(hashes[-1] if hashes else b"", seq.token_ids(i * bs, (i + 1) * bs)))
        return hashes[:num_blocks]

    def _take(self) -> int:
        """A block for new KV: a free one, else the least recently used cached one (its prefix is dropped)."""
        if self.free_blocks:
            return self.free_blocks.pop()
        block, _ = self.evictable.popitem(last=False)
        del self.cached[self.block_hash[block]]
        self.block_hash[block] = None
        return block

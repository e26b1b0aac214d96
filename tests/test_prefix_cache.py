"""Prefix caching: the same greedy tokens with the cache on as off (both schedule modes, both
policies, preemption, aborts, TP, PP), only uncached tokens computed, blocks shared and returned,
LRU eviction that spares blocks in use, hashes that name whole prefixes, and no hit on a block
whose KV is still being written."""
from __future__ import annotations

import random

import pytest
from engine_utils import greedy, make_engine, run_to_completion
from test_slo_policy import slo_engine

from laminar import EngineArgs, SamplingParams
from laminar.block_manager import BlockManager, chain_hash
from laminar.scheduler import Scheduler
from laminar.sequence import Sequence

BLOCK = 4  # make_engine's and slo_engine's block_size

ENGINES = {
    # Static layered: every batch crosses 4 layer groups, one per step.
    "layered": lambda model, **kw: make_engine(model, group_token_thresholds=(), max_num_batched_tokens=32, **kw),
    "chunked": lambda model, **kw: make_engine(model, schedule_mode="chunked", max_num_batched_tokens=16,
                                               max_num_seqs=16, **kw),
    # SLO policy on a fixed profile: partial spans, and batches that start as others finish.
    "layered-slo": lambda model, **kw: slo_engine(model, 18, **kw),
    "chunked-slo": lambda model, **kw: slo_engine(model, 25, "chunked", **kw),
}


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, 257) for _ in range(n)]


def shared_prefix_workload(seed: int, n: int = 16) -> dict[int, list]:
    """Prompts on three system prompts (lengths on and off the block size), exact repeats of
    earlier prompts (all cached but the last block, recomputed for its logits) and unrelated
    prompts, arriving over 24 iterations."""
    rng = random.Random(seed)
    systems = [tokens(rng, 13), tokens(rng, 24), tokens(rng, 41)]
    prompts: list[list[int]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.6:
            prompts.append(rng.choice(systems) + tokens(rng, rng.randint(1, 20)))
        elif kind < 0.8 and prompts:
            prompts.append(list(rng.choice(prompts)))
        else:
            prompts.append(tokens(rng, rng.randint(1, 40)))
    arrivals: dict[int, list] = {}
    for i, prompt in enumerate(prompts):
        arrivals.setdefault(rng.randint(0, 24), []).append((f"r{i}", prompt, greedy(rng.randint(1, 8))))
    return arrivals


def check_pool(engine) -> None:
    """The pool's bookkeeping after a step: a block's reference count is the number of live
    sequences holding it, every block is in use, free (no prefix) or evictable (a prefix) exactly
    once, the cache map and the blocks' hashes agree, and no block a batch in flight is writing
    (from its chunk's start on) is in the cache."""
    blocks = engine.blocks
    refs = [0] * blocks.num_blocks
    for seq in engine.seqs.values():
        for block in seq.block_table:
            refs[block] += 1
    assert refs == blocks.ref_counts
    assert all(refs[b] == 0 and blocks.block_hash[b] is None for b in blocks.free_blocks)
    assert all(refs[b] == 0 and blocks.block_hash[b] is not None for b in blocks.evictable)
    pooled = list(blocks.free_blocks) + list(blocks.evictable)
    assert len(set(pooled)) == len(pooled) == blocks.num_blocks - sum(r > 0 for r in refs)
    assert {b: h for h, b in blocks.cached.items()} == {b: h for b, h in enumerate(blocks.block_hash) if h}
    for batch in engine.scheduler.batches:
        for chunk in batch.chunks:
            written = chunk.seq.block_table[chunk.start // blocks.block_size:]
            assert all(blocks.block_hash[b] is None for b in written), "a block still being written is cached"


def run(engine, arrivals) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Output ids and cached prompt tokens per request; the pool is checked after every step and
    must be whole at the end."""
    cached: dict[str, int] = {}
    outputs = run_to_completion(engine, arrivals, on_step=lambda it, e: check_pool(e),
                                on_output=lambda out: cached.__setitem__(out.request_id, out.num_cached_tokens))
    check_pool(engine)
    assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"
    return outputs, cached


def prompts_of(arrivals) -> dict[str, list[int]]:
    return {rid: prompt for reqs in arrivals.values() for rid, prompt, _ in reqs}


@pytest.mark.parametrize("mode", ENGINES)
def test_cache_on_matches_cache_off(moe_checkpoint_5, mode):
    """Mixed hits and misses give the tokens of the uncached engine; only the uncached tokens are
    computed (they alone form the prefill batches the policies plan and the cost model prices);
    the counters are the tokens looked up and found."""
    arrivals = shared_prefix_workload(0)
    prompts = prompts_of(arrivals)
    off_engine = ENGINES[mode](moe_checkpoint_5, enable_prefix_caching=False)
    off, off_cached = run(off_engine, arrivals)
    engine = ENGINES[mode](moe_checkpoint_5)
    on, cached = run(engine, arrivals)
    assert on == off
    hits = sum(cached.values())
    assert hits > 0 and 0 in cached.values(), "the workload mixes hits and misses"
    assert all(n % BLOCK == 0 and n < len(prompts[rid]) for rid, n in cached.items())
    stats, off_stats = engine.get_stats(), off_engine.get_stats()
    total = sum(len(p) for p in prompts.values())
    assert (off_stats.prompt_tokens, stats.prompt_tokens) == (total, total - hits)
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (total, hits)
    assert set(off_cached.values()) == {0} and not off_engine.blocks.cached
    assert (off_stats.prefix_cache_queries, off_stats.prefix_cache_hits) == (0, 0)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_next_turn_hits_the_previous_answer(moe_checkpoint_5, mode):
    """A conversation resends its history: the blocks its decodes filled are cached too."""
    engine, off_engine = ENGINES[mode](moe_checkpoint_5), ENGINES[mode](moe_checkpoint_5, enable_prefix_caching=False)
    turn1 = list(range(1, 23))
    answer = run(engine, {0: [("t1", turn1, greedy(9))]})[0]["t1"]
    turn2 = turn1 + answer + [7, 8, 9]
    got, cached = run(engine, {0: [("t2", turn2, greedy(5))]})
    assert got == run(off_engine, {0: [("t2", turn2, greedy(5))]})[0]
    # Turn 1 computed its prompt and every answer token but the last: its full blocks are hits.
    assert cached["t2"] == (len(turn1) + len(answer) - 1) // BLOCK * BLOCK


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_preemption_with_shared_blocks(moe_checkpoint_5, mode):
    """A pool too small for the load: sequences sharing a system prompt are preempted and
    recomputed; tokens match the uncached engine and no block leaks."""
    rng = random.Random(5)
    system = tokens(rng, 24)
    arrivals = {2 * i: [(f"p{i}", system + tokens(rng, rng.randint(1, 12)), greedy(24))] for i in range(8)}
    small = dict(num_kv_blocks=40, max_model_len=128)
    off_engine = ENGINES[mode](moe_checkpoint_5, enable_prefix_caching=False, **small)
    engine = ENGINES[mode](moe_checkpoint_5, **small)
    assert run(engine, arrivals)[0] == run(off_engine, arrivals)[0]
    assert engine.get_stats().num_preemptions > 0 and off_engine.get_stats().num_preemptions > 0


def test_recompute_after_preemption_finds_its_own_blocks(moe_checkpoint_5):
    """Unrelated prompts, so every hit is a preempted sequence's own earlier KV: fewer tokens are
    recomputed than without the cache, with the same result."""
    rng = random.Random(6)
    arrivals = {i: [(f"u{i}", tokens(rng, 30), greedy(30))] for i in range(6)}
    small = dict(num_kv_blocks=40, max_model_len=128)
    off_engine = ENGINES["chunked"](moe_checkpoint_5, enable_prefix_caching=False, **small)
    engine = ENGINES["chunked"](moe_checkpoint_5, **small)
    on, cached = run(engine, arrivals)
    assert on == run(off_engine, arrivals)[0]
    assert set(cached.values()) == {0}, "no prompt shares a block with another"
    stats, off_stats = engine.get_stats(), off_engine.get_stats()
    assert stats.num_preemptions > 0 and off_stats.num_preemptions > 0
    assert stats.prompt_tokens < off_stats.prompt_tokens


def test_abort_mid_stack_caches_nothing(moe_checkpoint_5):
    """Layered: a request aborted while its batch is between layer groups (its KV written in the
    first layers only) leaves no block in the cache and every block in the pool."""
    engine = ENGINES["layered"](moe_checkpoint_5)
    prompt = list(range(1, 30))
    engine.add_request("a", prompt, greedy(4))
    engine.step()
    assert 0 < engine.scheduler.batches[0].layers_done < 5
    engine.abort("a")
    check_pool(engine)
    assert not engine.blocks.cached and engine.blocks.num_free == engine.blocks.num_blocks
    got, cached = run(engine, {0: [("b", prompt, greedy(4))]})
    assert cached == {"b": 0}
    assert got == run(ENGINES["layered"](moe_checkpoint_5, enable_prefix_caching=False), {0: [("b", prompt, greedy(4))]})[0]


def test_abort_between_chunks_keeps_the_complete_ones(moe_checkpoint_5):
    """Chunked: the blocks of a finished chunk are complete in every layer and stay cached when
    the request is aborted before its next chunk; the next request with that prompt hits them."""
    engine = ENGINES["chunked"](moe_checkpoint_5)
    prompt = list(range(1, 41))
    engine.add_request("a", prompt, greedy(4))
    engine.step()  # the first 16-token chunk
    engine.abort("a")
    check_pool(engine)
    assert len(engine.blocks.cached) == 16 // BLOCK and engine.blocks.num_free == engine.blocks.num_blocks
    got, cached = run(engine, {0: [("b", prompt, greedy(4))]})
    assert cached == {"b": 16}
    assert got == run(ENGINES["chunked"](moe_checkpoint_5, enable_prefix_caching=False), {0: [("b", prompt, greedy(4))]})[0]


def test_no_hit_on_a_batch_still_between_layers(moe_checkpoint_5):
    """Layered SLO policy: B shares A's prefix and starts its batch in the step in which A's batch
    crosses its last layers, so A's blocks are incomplete when B is looked up and B computes its
    whole prompt; C, admitted after, hits A's blocks."""
    rng = random.Random(7)
    shared = tokens(rng, 32)
    arrivals = {0: [("d", [5, 6, 7], greedy(40))], 2: [("a", shared + tokens(rng, 8), greedy(3))],
                3: [("b", shared + tokens(rng, 8), greedy(3))], 12: [("c", shared + tokens(rng, 8), greedy(3))]}
    engine = ENGINES["layered-slo"](moe_checkpoint_5)
    together = []
    engine_steps = lambda it, e: together.append(  # noqa: E731
        e.last_step is not None and [s.request_ids for s in e.last_step.segments] == [["a"], ["b"]])
    cached: dict[str, int] = {}
    got = run_to_completion(engine, arrivals, on_step=lambda it, e: (check_pool(e), engine_steps(it, e)),
                            on_output=lambda out: cached.__setitem__(out.request_id, out.num_cached_tokens))
    assert any(together), "B's batch starts as A's finishes"
    assert cached["b"] == 0 and cached["c"] == 32
    assert got == run(ENGINES["layered-slo"](moe_checkpoint_5, enable_prefix_caching=False), arrivals)[0]


@pytest.mark.parametrize("ranks", [dict(tensor_parallel_size=2), dict(pipeline_parallel_size=2)])
def test_tp2_pp2_with_cache_match_one_rank_without(moe_checkpoint_5, ranks):
    """The block map is rank 0's: the workers only see block tables, shared blocks included."""
    arrivals = shared_prefix_workload(1, n=10)
    want = run(ENGINES["layered"](moe_checkpoint_5, enable_prefix_caching=False), arrivals)[0]
    engine = ENGINES["layered"](moe_checkpoint_5, **ranks)
    try:
        got, cached = run(engine, arrivals)
    finally:
        engine.shutdown()
    assert got == want and sum(cached.values()) > 0


def computed(blocks: BlockManager, prompt: list[int], rid: str = "s", lookup: bool = True) -> Sequence:
    """A sequence admitted with its cached prefix (unless lookup is False), grown to its prompt and
    registered as if its prefill had crossed every layer."""
    seq = Sequence(rid, prompt, SamplingParams(), None, None, 0.0)
    blocks.admit(seq, blocks.lookup(seq) if lookup else [])
    blocks.grow(seq, len(prompt))
    seq.num_computed = len(prompt)
    blocks.register(seq)
    return seq


def test_eviction_is_lru_and_spares_blocks_in_use():
    blocks = BlockManager(num_blocks=8, block_size=4)
    a = computed(blocks, list(range(100, 112)), "a")  # 3 full blocks
    b = computed(blocks, list(range(200, 208)), "b")  # 2 full blocks
    a_blocks, b_blocks = list(a.block_table), list(b.block_table)
    blocks.free(a)
    blocks.free(b)
    # A sequence's last block goes first: a prefix is useless once the block before it is gone.
    assert list(blocks.evictable) == a_blocks[::-1] + b_blocks[::-1]
    assert blocks.num_free == 8
    c = computed(blocks, list(range(300, 316)), "c", lookup=False)  # 4 blocks: 3 free ones, then 1 evicted
    assert set(c.block_table) & set(a_blocks) == {a_blocks[2]}
    assert blocks.lookup(Sequence("a2", list(range(100, 112)) + [1], SamplingParams(), None, None, 0.0)) == a_blocks[:2]
    d = computed(blocks, list(range(100, 108)) + [9, 9, 9], "d")  # shares a's first 2 blocks, 1 new block
    assert d.block_table[:2] == a_blocks[:2] and [blocks.ref_counts[x] for x in a_blocks[:2]] == [1, 1]
    assert list(blocks.evictable) == [b_blocks[0]]  # the new block evicted b's last block, the LRU one
    assert blocks.num_free == 1 and not blocks.can_grow(Sequence("e", [1] * 8, SamplingParams(), None, None, 0.0), 8)
    blocks.free(c)
    blocks.free(d)
    # Released blocks are the most recently used: b's first block (released long ago) goes first.
    assert next(iter(blocks.evictable)) == b_blocks[0] and blocks.num_free == 8


def test_hash_names_the_whole_prefix():
    """The same block of tokens after a different prefix is a different block: a chain hash, not
    the block's own tokens. The last prompt token is never a hit (its logits are needed)."""
    blocks = BlockManager(num_blocks=16, block_size=4)
    computed(blocks, [1, 2, 3, 4, 5, 6, 7, 8])
    for prompt in ([9, 9, 9, 9, 5, 6, 7, 8, 1], [5, 6, 7, 8, 1, 2, 3, 4, 1]):  # other prefix; blocks swapped
        assert blocks.lookup(Sequence("o", prompt, SamplingParams(), None, None, 0.0)) == []
    same = Sequence("s", [1, 2, 3, 4, 5, 6, 7, 8], SamplingParams(), None, None, 0.0)
    assert len(blocks.lookup(same)) == 1, "a prompt of whole blocks recomputes its last block"
    assert chain_hash(b"", [5, 6, 7, 8]) != chain_hash(chain_hash(b"", [1, 2, 3, 4]), [5, 6, 7, 8])
    assert chain_hash(b"", [1, 2, 3, 4]) == chain_hash(b"", [1, 2, 3, 4]) != chain_hash(b"", [1, 2, 3, 5])


def test_duplicate_prefix_keeps_the_first_block():
    """Two sequences that computed the same prefix side by side: the first registered block
    serves the prefix; the duplicate returns to the free list when released."""
    blocks = BlockManager(num_blocks=8, block_size=4)
    first = computed(blocks, [1, 2, 3, 4, 5], "first", lookup=False)
    second = computed(blocks, [1, 2, 3, 4, 6], "second", lookup=False)
    assert blocks.cached == {chain_hash(b"", [1, 2, 3, 4]): first.block_table[0]}
    duplicate = second.block_table[0]
    blocks.free(second)
    assert duplicate in blocks.free_blocks and duplicate not in blocks.evictable


def test_disabled_cache_shares_nothing():
    blocks = BlockManager(num_blocks=8, block_size=4, enable_caching=False)
    computed(blocks, [1, 2, 3, 4, 5])
    assert not blocks.cached and blocks.lookup(Sequence("s", [1, 2, 3, 4, 5], SamplingParams(), None, None, 0.0)) == []


def test_a_batch_takes_its_cached_prefixes_before_growing():
    """One batch admits a new prompt and one whose prefix sits in the least recently used
    evictable blocks: growing the first must not evict the blocks the second is about to share."""
    blocks = BlockManager(num_blocks=6, block_size=4)
    prefix = list(range(10, 18))
    blocks.free(computed(blocks, prefix, "old"))  # evictable, least recently used
    blocks.free(computed(blocks, list(range(50, 62)), "newer"))
    cached = blocks.lookup(Sequence("probe", prefix + [1], SamplingParams(), None, None, 0.0))
    scheduler = Scheduler(EngineArgs(model="x", schedule_mode="chunked", block_size=4, max_num_seqs=8,
                                     max_num_batched_tokens=64), 2, blocks)
    first = Sequence("first", list(range(90, 98)), SamplingParams(), None, None, 0.0)
    second = Sequence("second", prefix + [1], SamplingParams(), None, None, 0.0)
    scheduler.add(first)
    scheduler.add(second)
    (segment,) = scheduler.schedule().segments
    assert [c.seq for c in segment.chunks] == [first, second]
    assert len(cached) == 2 and second.block_table[:2] == cached and second.num_computed == 8
    assert not set(first.block_table) & set(second.block_table)

"""n > 1 (the prompt computed once, its blocks shared, per-sample seeds, abort of all samples),
logit_bias, and prompt logprobs against transformers' log-softmax of the same prompt."""
from __future__ import annotations

import pytest
import torch
from engine_utils import greedy, make_engine
from test_model_parity import hf_logits

from laminar import SamplingParams

BLOCK = 4  # make_engine's block_size


def prompt(n: int, seed: int = 3) -> list[int]:
    return torch.randint(1, 257, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(engine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[tuple[str, int], list]:
    """(request, sample) -> [token ids, finish reason, prompt logprobs, num_cached_tokens]."""
    for rid, (ids, params) in requests.items():
        engine.add_request(rid, ids, params)
    out: dict[tuple[str, int], list] = {}
    finished = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            entry = out.setdefault((o.request_id, o.index), [[], None, None, o.num_cached_tokens])
            entry[0] += o.new_token_ids
            entry[1] = o.finish_reason
            entry[2] = entry[2] or o.prompt_logprobs
            if o.finished:
                finished.append(o.request_id)
    assert sorted(finished) == sorted(requests)  # the request's last output says so, once
    return out


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_n_samples_compute_the_prompt_once(moe_checkpoint, mode):
    ids = prompt(41)
    engine = make_engine(moe_checkpoint, schedule_mode=mode, enable_prefix_caching=True)
    params = SamplingParams(max_tokens=6, n=4, seed=7, ignore_eos=True)
    out = run(engine, {"r": (ids, params)})
    shared = (len(ids) - 1) // BLOCK * BLOCK  # every sample recomputes only the block of the last prompt token
    stats = engine.stats
    assert stats.prompt_tokens == len(ids) + 3 * (len(ids) - shared)
    assert stats.prefix_cache_hits == 3 * shared and stats.prefix_cache_queries == 4 * len(ids)
    assert sorted(out) == [("r", i) for i in range(4)]
    assert all(len(v[0]) == 6 and v[1] == "length" for v in out.values())
    assert engine.blocks.num_free == engine.blocks.num_blocks
    # Sample i draws from seed + i, as a request of its own would.
    for i in range(4):
        alone = run(make_engine(moe_checkpoint, schedule_mode=mode),
                    {"a": (ids, SamplingParams(max_tokens=6, seed=7 + i, ignore_eos=True))})
        assert alone[("a", 0)][0] == out[("r", i)][0]


def test_abort_ends_every_sample(moe_checkpoint):
    engine = make_engine(moe_checkpoint)
    engine.add_request("r", prompt(30), SamplingParams(max_tokens=50, n=3, ignore_eos=True))
    engine.add_request("other", prompt(9, 4), greedy(3))
    while len(engine.forks.get("r", [])) < 2 or engine.forks["r"][0].output_token_ids == []:
        engine.step()
    assert engine.abort("r")
    while engine.has_unfinished_requests():
        assert all(o.request_id == "other" for o in engine.step())
    assert engine.blocks.num_free == engine.blocks.num_blocks and not engine.forks and not engine.unfinished


def test_logit_bias(moe_checkpoint):
    ids = prompt(10)
    engine = make_engine(moe_checkpoint)
    base = run(engine, {"g": (ids, greedy(4))})[("g", 0)][0]
    out = run(engine, {"up": (ids, SamplingParams(max_tokens=4, logit_bias={"42": 100}, ignore_eos=True)),
                       "down": (ids, greedy(1, logit_bias={base[0]: -100}))})
    assert out[("up", 0)][0] == [42] * 4
    assert out[("down", 0)][0] != base[:1]
    with pytest.raises(ValueError, match="logit_bias"):
        engine.add_request("bad", ids, greedy(1, logit_bias={257: 1.0}))


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_prompt_logprobs_match_transformers(moe_checkpoint, mode):
    """A 45-token prompt in 16-token chunks (layered: each chunk across 4 layer groups), then the same
    prompt again: it would hit the prefix cache, but a prompt_logprobs request skips it."""
    ids = prompt(45)
    expected = hf_logits(moe_checkpoint, ids).float().log_softmax(dim=-1)
    engine = make_engine(moe_checkpoint, schedule_mode=mode, max_num_batched_tokens=16, max_num_seqs=8,
                         group_token_thresholds=())
    run(engine, {"warm": (ids, greedy(1))})
    out = run(engine, {"p": (ids, greedy(2, prompt_logprobs=3)), "plain": (ids, greedy(2))})
    tokens, _, entries, cached = out[("p", 0)]
    assert cached == 0 and out[("plain", 0)][3] > 0
    assert entries[0] is None and len(entries) == len(ids)
    for pos, entry in enumerate(entries[1:], start=1):
        row = expected[pos - 1]
        assert entry.token_id == ids[pos]
        assert abs(entry.logprob - row[ids[pos]].item()) < 1e-4
        assert entry.rank == int((row > row[ids[pos]]).sum()) + 1
        top = row.topk(3)
        assert [t for t, _ in entry.top] == top.indices.tolist()
        assert torch.allclose(torch.tensor([lp for _, lp in entry.top]), top.values, atol=1e-4)
    assert tokens == out[("plain", 0)][0]


def test_tp2_matches_tp1(moe_checkpoint_5):
    """Rank 0 samples and takes the prompt rows; the workers run the same rows (logits_rows)."""
    from test_tp import make_engine as tp_engine

    ids = prompt(37)
    requests = {"p": (ids, greedy(3, prompt_logprobs=2, logit_bias={5: 2.5})), "n": (ids[:21], greedy(3, n=2))}
    results = []
    for tp in (1, 2):
        engine = tp_engine(moe_checkpoint_5, tp)
        try:
            results.append(run(engine, requests))
        finally:
            engine.shutdown()
    one, two = results
    assert sorted(one) == sorted(two) == [("n", 0), ("n", 1), ("p", 0)]
    for key in one:
        assert one[key][0] == two[key][0]
    for a, b in zip(one[("p", 0)][2][1:], two[("p", 0)][2][1:]):
        assert (a.token_id, a.rank) == (b.token_id, b.rank) and abs(a.logprob - b.logprob) < 1e-4

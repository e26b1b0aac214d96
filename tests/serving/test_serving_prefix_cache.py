"""Prefix caching through tritonserver: a prompt sharing a prefix with an earlier one reports the
cached tokens (output num_cached_tokens), the counters move by the tokens looked up and found,
and the tokens are those of the engine run in the test process."""
from __future__ import annotations

import random

import numpy as np
from test_serving_server import metric, offline

from laminar.client.grpc_stream import generate, greedy_tensors

BLOCK = 16  # config.pbtxt's block_size


def test_shared_prefix_is_served_from_the_cache(server, offline_engines):
    rng = random.Random(15)
    shared = [rng.randrange(2048) for _ in range(40)]
    prompts = [shared + [1, 2, 3], shared + [4, 5]]
    before = server.metrics()
    results = [generate(server.grpc_url, {**greedy_tensors(p, 4, stream=False), "return_num_cached_tokens": np.array([True])})
               for p in prompts]
    after = server.metrics()
    assert [r.error for r in results] == [None, None]
    assert [int(r.responses[-1]["num_cached_tokens"][0]) for r in results] == [0, len(shared) // BLOCK * BLOCK]
    assert [r.ids for r in results] == [offline(offline_engines["layered"], [p], 4)[0] for p in prompts]
    grew = {name: metric(after, name) - metric(before, name)
            for name in ("lp:prefix_cache_queries_total", "lp:prefix_cache_hits_total")}
    assert grew == {"lp:prefix_cache_queries_total": sum(map(len, prompts)),
                    "lp:prefix_cache_hits_total": len(shared) // BLOCK * BLOCK}

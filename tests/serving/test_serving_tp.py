"""Tensor parallelism inside the real server: the model instance starts its worker process,
serves the single-process engine's tokens, and stopping the server stops the worker too."""
from __future__ import annotations

import os

from conftest import start_server
from grpc_stream import generate
from test_serving_server import PROMPTS, greedy_tensors, offline
from triton_server import write_variant


def test_tp2_serves_tp1_tokens_and_stops_its_worker(demo_model, offline_engines, tmp_path):
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {"tensor_parallel_size": "2"})
    server = start_server(repo, demo_model, tmp_path / "server.log")
    try:
        below = server.descendants()
        assert len(below) >= 2, "the stub and its rank-1 worker run below the server"
        for prompt in PROMPTS:
            result = generate(server.grpc_url, greedy_tensors(prompt, 10))
            assert result.error is None, result.error
            assert result.ids == offline(offline_engines["layered"], [prompt], 10)[0]
        assert server.stop() == 0, server.log()[-3000:]
    finally:
        server.stop()
    alive = [pid for pid in below if os.path.exists(f"/proc/{pid}")]
    assert not alive, f"left behind: {alive}"

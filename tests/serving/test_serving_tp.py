"""Tensor parallelism inside the real server: the model instance starts its worker process,
serves the single-process engine's tokens, and stopping the server stops the worker too."""
from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

from conftest import start_server
from test_serving_server import PROMPTS, offline

from laminar.client.grpc_stream import generate, greedy_tensors
from laminar.client.triton_server import wait_for, write_variant
from laminar.worker_group import PARENT_ENV


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


def model_ready(server, name: str = "laminar") -> bool:
    try:
        with urllib.request.urlopen(f"{server.http_url}/v2/models/{name}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_dead_worker_fails_requests_and_unloads_the_model(demo_model, tmp_path):
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {"tensor_parallel_size": "2"})
    server = start_server(repo, demo_model, tmp_path / "server.log")
    try:
        workers = [pid for pid in server.descendants()
                   if PARENT_ENV.encode() in Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        result = generate(server.grpc_url, greedy_tensors(PROMPTS[0], 10))
        assert result.error is not None and "worker rank 1 exited" in result.error
        assert wait_for(lambda: not model_ready(server), timeout=30), "the failed model should unload"
        assert wait_for(lambda: not server.descendants(), timeout=30), "no stub or worker left"
        assert server.is_ready(), "the server itself keeps running"
    finally:
        server.stop()

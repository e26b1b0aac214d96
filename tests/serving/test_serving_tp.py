"""Tensor and pipeline parallelism inside the real server: the model instance starts its worker
process, serves the single-process engine's tokens, and stopping the server stops the worker too;
a pipeline stage on a "remote" rank that dies fails the request clearly, and the supervisor's
restarted server forms the group again with the rank that replaces it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from conftest import start_server
from test_serving_server import PROMPTS, offline

from laminar.client.grpc_stream import generate, greedy_tensors
from laminar.client.triton_server import wait_for, write_variant
from laminar.distributed import Rendezvous
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


def remote_rank(where: Rendezvous, log) -> subprocess.Popen:
    """Rank 1 as another node runs it: its own session, torchrun-style environment, serving group after group."""
    env = dict(os.environ, MASTER_ADDR=where.host, MASTER_PORT=str(where.port), WORLD_SIZE="2", RANK="1",
               LOCAL_RANK="0")
    return subprocess.Popen([sys.executable, "-m", "laminar.worker"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_pp2_remote_stage_lost_and_the_supervisor_restart(demo_model, offline_engines, tmp_path):
    where = Rendezvous.loopback()
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {"pipeline_parallel_size": "2", "dist_init_addr": f"{where.host}:{where.port}",
                                    "local_world_size": "1"})
    log = open(tmp_path / "rank1.log", "w")
    ranks = [remote_rank(where, log)]
    server = start_server(repo, demo_model, tmp_path / "server.log", supervised=True)
    try:
        want = offline(offline_engines["layered"], [PROMPTS[0]], 10)[0]
        assert generate(server.grpc_url, greedy_tensors(PROMPTS[0], 10)).ids == want
        ranks[0].kill()
        ranks[0].wait()
        result = generate(server.grpc_url, greedy_tensors(PROMPTS[0], 10))
        assert result.error is not None and "rank 1 runs on another node" in result.error, result.error
        ranks.append(remote_rank(where, log))  # the lost node's rank comes back
        assert wait_for(lambda: "died while the model was ready" in server.log(), timeout=60), server.log()[-3000:]
        # The supervisor logs that line before it kills the old server, which may answer "ready" a moment longer.
        assert wait_for(lambda: not model_ready(server), timeout=60), server.log()[-3000:]
        assert wait_for(lambda: model_ready(server), timeout=180), server.log()[-3000:]
        assert generate(server.grpc_url, greedy_tensors(PROMPTS[0], 10)).ids == want
    finally:
        server.stop(signal.SIGTERM, timeout=40)
        for proc in ranks:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()

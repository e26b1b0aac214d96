"""Stopping tritonserver mid-stream drains the in-flight request (it completes normally), then the
server exits and leaves no stub process (and so no engine thread) behind.

Triton 2.51 finalizes a decoupled model once its in-flight requests are complete and no gRPC
stream is open on it, so the client closes its stream when its request ends, as a client must."""
from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import start_server

from laminar.client.grpc_stream import Stream, greedy_tensors
from laminar.client.triton_server import wait_for, write_variant
from laminar_supervisor.processes import shm_path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_leaves_nothing_behind(demo_model, tmp_path, sig):
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {})
    server = start_server(repo, demo_model, tmp_path / "server.log")
    stream = Stream(server.grpc_url)
    try:
        stubs = server.descendants()
        regions = [shm_path(s.shm_region) for s in server.stubs().values()]
        assert stubs and regions, "the Python backend stub should run below the server"
        result = stream.send("inflight", greedy_tensors("The quick brown fox", 60))
        assert wait_for(lambda: len(result.responses) >= 2)
        server.proc.send_signal(sig)
        assert result.done.wait(15) and result.error is None, result.error
        stream.close()
        assert server.stop(sig, timeout=30) == 0, server.log()[-3000:]
    finally:
        server.stop()  # first: closing a stream to a hung server would block
        stream.close()
    alive = [pid for pid in stubs if os.path.exists(f"/proc/{pid}")]
    assert not alive, f"left behind: {alive}"
    assert not [r for r in regions if r.exists()], "shared memory left behind"
    assert len(result.ids) == 60 and result.finish_reason == "length"


def test_sigterm_after_cancels_does_not_wait_for_the_exit_timeout(demo_model, tmp_path):
    """Cancelled requests used to stay in flight toward Triton: SIGTERM then waited the whole
    exit timeout (20 s here) and tritonserver aborted. The time itself is in perf/reliability.py."""
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {})
    server = start_server(repo, demo_model, tmp_path / "server.log")
    try:
        stubs = server.stubs()
        for i in range(5):
            stream = Stream(server.grpc_url)
            result = stream.send(f"c{i}", greedy_tensors("The quick brown fox", 2000))
            assert wait_for(lambda: len(result.responses) >= 1)
            stream.close(cancel=True)
        assert wait_for(lambda: server.log().count("aborted request") == 5)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(40)
        took = time.monotonic() - started
    finally:
        rc = server.stop()
    assert rc == 0 and took < 15, (rc, took, server.log()[-2000:])
    assert not [pid for pid in stubs if os.path.exists(f"/proc/{pid}")]
    assert not [s for s in stubs.values() if shm_path(s.shm_region).exists()]

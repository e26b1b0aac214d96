"""Stopping tritonserver mid-stream drains the in-flight request (it completes normally), then the
server exits and leaves no stub process (and so no engine thread) behind.

Triton 2.51 finalizes a decoupled model once its in-flight requests are complete and no gRPC
stream is open on it, so the client closes its stream when its request ends, as a client must."""
from __future__ import annotations

import os
import signal

import pytest
from conftest import start_server
from grpc_stream import Stream
from test_serving_server import greedy_tensors, wait_for
from triton_server import write_variant


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_leaves_nothing_behind(demo_model, tmp_path, sig):
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {})
    server = start_server(repo, demo_model, tmp_path / "server.log")
    stream = Stream(server.grpc_url)
    try:
        stubs = server.descendants()
        assert stubs, "the Python backend stub should run below the server"
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
    assert len(result.ids) == 60 and result.finish_reason == "length"

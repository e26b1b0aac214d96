"""A killed Python backend stub under the supervisor (`./build.sh serve`): every in-flight stream
gets an error instead of hanging, and the server comes back by itself with a new stub, leaving
neither the dead stub's shared-memory region nor any process behind."""
from __future__ import annotations

import os
import signal
import sys
import time

from conftest import start_server

from laminar.client.grpc_stream import Stream, generate, greedy_tensors, wait_all
from laminar.client.triton_server import wait_for, write_variant
from laminar_supervisor.processes import shm_path
from laminar_supervisor.supervisor import Supervisor


def test_killed_stub_fails_in_flight_streams_and_the_server_recovers(demo_model, tmp_path):
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {})
    server = start_server(repo, demo_model, tmp_path / "server.log", supervised=True)
    streams = [Stream(server.grpc_url) for _ in range(4)]
    try:
        results = [s.send(f"s{i}", greedy_tensors("The quick brown fox", 3000)) for i, s in enumerate(streams)]
        assert wait_for(lambda: all(len(r.responses) >= 2 for r in results))
        (stub,) = server.stubs().values()
        os.kill(stub.pid, signal.SIGKILL)
        wait_all(results, timeout=30)  # the client timeout the streams hung to was 60 s
        assert all(r.error is not None and len(r.responses) < 3000 for r in results), [r.error for r in results]
        assert wait_for(lambda: server.is_ready() and set(server.stubs()) - {stub.pid}, timeout=120)
        assert not shm_path(stub.shm_region).exists(), "the dead stub's region is removed"
        assert "died while the model was ready" in server.log()
        good = generate(server.grpc_url, greedy_tensors("The quick brown fox", 3))
        assert good.error is None and len(good.ids) == 3
    finally:
        for s in streams:
            s.close()
        stubs = server.stubs()
        assert server.stop(signal.SIGTERM, timeout=40) == 0, server.log()[-3000:]
    assert not any(os.path.exists(f"/proc/{pid}") for pid in stubs)
    assert not any(shm_path(s.shm_region).exists() for s in stubs.values())


def test_crashed_tritonserver_is_restarted_and_its_stub_cleaned_up(demo_model, tmp_path):
    """tritonserver 2.51 itself crashes now and then under gRPC cancellations (perf/results/
    soak-cpu.md); a SIGKILL stands in for the crash here."""
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {})
    server = start_server(repo, demo_model, tmp_path / "server.log", supervised=True)
    try:
        (stub,) = server.stubs().values()
        (tritonserver,) = server.descendants() - {stub.pid}
        time.sleep(2)  # the supervisor restarts a server it saw serving (it polls every 0.5 s)
        os.kill(tritonserver, signal.SIGKILL)
        assert wait_for(lambda: not os.path.exists(f"/proc/{stub.pid}") and not shm_path(stub.shm_region).exists(),
                        timeout=60), "the orphaned stub and its region are cleaned up"
        assert wait_for(lambda: server.is_ready() and set(server.stubs()) - {stub.pid}, timeout=120)
        assert "exited by itself" in server.log()
        assert generate(server.grpc_url, greedy_tensors("The quick brown fox", 3)).error is None
    finally:
        stubs = server.stubs()
        assert server.stop(signal.SIGTERM, timeout=40) == 0, server.log()[-3000:]
    assert not any(shm_path(s.shm_region).exists() for s in stubs.values())


def test_shutdown_ends_requests_that_would_outlive_the_exit_timeout(demo_model, tmp_path):
    """A request longer than --exit-timeout-secs (20 s) used to keep tritonserver past it:
    it then aborted (SIGABRT) and orphaned the stub. The supervisor has the model end it first."""
    repo = tmp_path / "repo"
    write_variant(repo, "laminar", {})
    server = start_server(repo, demo_model, tmp_path / "server.log", supervised=True)
    stream = Stream(server.grpc_url)
    try:
        stubs = server.stubs()
        result = stream.send("long", greedy_tensors("The quick brown fox", 4000))
        assert wait_for(lambda: len(result.responses) >= 2)
        server.proc.send_signal(signal.SIGTERM)
        assert result.done.wait(30) and "shutting down" in (result.error or ""), result.error
        stream.close()
        assert server.proc.wait(40) == 0, server.log()[-3000:]
    finally:
        server.stop()
        stream.close()
    assert "Signal (6)" not in server.log() and "killing it" not in server.log()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in stubs)
    assert not any(shm_path(s.shm_region).exists() for s in stubs.values())


def test_a_stop_during_the_restart_starts_no_new_server(monkeypatch):
    """SIGTERM while a crashed server is being cleaned up: the supervisor exits 0 instead of starting
    (and loading the model in) a server only to stop it."""
    supervisor = Supervisor([sys.executable, "-c", "pass"])
    started: list[int] = []

    def crashed_then_stop(server):
        server.wait()
        assert not started, "a server was started after the stop"
        started.append(server.pid)
        supervisor.request_stop(signal.SIGTERM)
        return -signal.SIGKILL, True  # as _watch reports a crash to restart from

    monkeypatch.setattr(supervisor, "_watch", crashed_then_stop)
    assert supervisor.run() == 0
    assert len(started) == 1

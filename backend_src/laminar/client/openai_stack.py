"""tritonserver under the supervisor with the OpenAI API in front, as `./build.sh serve` runs them.

SIGTERM after OpenAI traffic: how long tritonserver takes to exit, and whether it had to
give up on the model (Triton finalizes a decoupled model only once no gRPC stream is open on it,
so a stream the OpenAI layer kept open made it wait out --exit-timeout-secs).

Used by tests/serving/test_openai_shutdown.py (one try), perf/openai_shutdown.py (many, under
CPU load) and the OpenAI tests (wait_http)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import openai

from laminar.client.triton_server import TritonServer, free_port, write_variant

EXIT_TIMEOUT_MARK = "Exit timeout expired"


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Waits until `url` answers 200 (the OpenAI API's /health), failing at once if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the OpenAI API server exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


@dataclass
class Stack:
    server: TritonServer
    api: subprocess.Popen
    url: str  # the OpenAI API's base, without /v1

    def stop(self) -> None:
        self.server.stop()
        if self.api.poll() is None:
            self.api.terminate()
            self.api.wait(30)


def start_stack(demo_model: Path, work: Path) -> Stack:
    """tritonserver under the supervisor (as `./build.sh serve` runs it) and the OpenAI API."""
    repo = work / "repo"
    write_variant(repo, "laminar", {})
    server = TritonServer(repo, {"LAMINAR_MODEL": str(demo_model), "LAMINAR_DEVICE": "cpu"}, work / "server.log",
                          supervised=True)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "laminar.openai_api", "--triton-url", server.grpc_url,
                           "--checkpoint", str(demo_model), "--host", "127.0.0.1", "--port", str(port),
                           "--restart-wait", "180"])
    stack = Stack(server, api, f"http://127.0.0.1:{port}")
    try:
        wait_http(f"{stack.url}/health", api)
    except BaseException:
        stack.stop()
        raise
    return stack


def openai_traffic(url: str) -> None:
    """What a client session sends: concurrent streaming chats, plain and listed completions,
    and a stream its client drops; returns once every request is answered."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "tell me a story"}]

    def chat() -> None:
        for _ in client.chat.completions.create(model="laminar", messages=messages, max_tokens=12, stream=True,
                                                stream_options={"include_usage": True}):
            pass

    def completions() -> None:
        client.completions.create(model="laminar", prompt="The quick brown fox", max_tokens=8)
        client.completions.create(model="laminar", prompt=["a b c", "d e f"], max_tokens=4)

    def dropped() -> None:
        body = {"model": "laminar", "prompt": "The quick brown fox", "max_tokens": 500, "stream": True}
        request = urllib.request.Request(f"{url}/v1/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            r.readline()

    threads = [threading.Thread(target=f) for f in (chat, chat, chat, chat, completions, dropped)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def sigterm_exit(server: TritonServer, timeout: float = 60.0) -> tuple[float, int, bool]:
    """(seconds to exit, exit code, whether Triton gave up waiting on the model)."""
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    rc = server.proc.wait(timeout)
    took = time.monotonic() - started
    return took, rc, EXIT_TIMEOUT_MARK in server.log()

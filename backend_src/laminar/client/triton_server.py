"""A real tritonserver process on free ports, serving a copy of model_repository/laminar: what
the serving tests and the perf scripts (sweeps, soak, reliability) run against.

It works from a checkout (the editable install): the model repository and build.sh's
tritonserver wrapper are found from this file's place in the tree. The copy is the shipped
model (config.pbtxt and model.py unchanged) plus, optionally, variants that differ only in name
and config parameters (e.g. schedule_mode), so one server covers both schedule modes.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from laminar_supervisor.processes import Stub, descendants, stubs_of

ROOT = Path(__file__).resolve().parents[3]
SHIPPED_MODEL = ROOT / "model_repository" / "laminar"


def wait_for(predicate, timeout: float = 30.0, poll: float = 0.05) -> bool:
    """Polls predicate until it holds (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def free_ports(n: int) -> list[int]:
    """n distinct free ports: each socket stays bound until all are picked (picked one at a time,
    the OS may hand the same port out twice, and tritonserver refuses HTTP and gRPC on one port)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def free_port() -> int:
    return free_ports(1)[0]


def tritonserver_binary() -> str:
    local = ROOT / ".venv" / "bin" / "tritonserver"
    found = str(local) if local.exists() else shutil.which("tritonserver")
    if not found:
        raise RuntimeError("tritonserver not found: run ./build.sh")
    return found


def write_variant(repo: Path, name: str, parameters: dict[str, str]) -> None:
    """model_repository/laminar copied as model `name` with some parameters changed."""
    shutil.copytree(SHIPPED_MODEL, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    config = (repo / name / "config.pbtxt").read_text()
    config = re.sub(r'^name: "laminar"', f'name: "{name}"', config, flags=re.M)
    for key, value in parameters.items():
        config, n = re.subn(rf'(key: "{key}", value: {{ string_value: )"[^"]*"', rf'\1"{value}"', config)
        if n != 1:
            raise ValueError(f"parameter {key} not in the shipped config")
    (repo / name / "config.pbtxt").write_text(config)


class TritonServer:
    """supervised: run tritonserver under laminar_supervisor, as `./build.sh serve` does;
    `proc` is then the supervisor."""

    def __init__(self, repo: Path, env: dict[str, str], log_path: Path, supervised: bool = False) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log_path = log_path
        clean = {k: v for k, v in os.environ.items() if not k.startswith("LAMINAR_")}
        self._log = open(log_path, "wb")
        command = [tritonserver_binary(), "--model-repository", str(repo), "--http-port", str(self.http_port),
                   "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port),
                   "--model-control-mode=explicit", "--load-model=*", "--exit-timeout-secs=20"]
        if supervised:
            command = [sys.executable, "-m", "laminar_supervisor", "--", *command]
        self.proc = subprocess.Popen(
            command, env={**clean, **env}, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if self.is_ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"tritonserver not ready after {timeout}s:\n{self.log()[-4000:]}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://localhost:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def descendants(self) -> set[int]:
        """PIDs of every process below the server (the Python backend stubs), from /proc."""
        return descendants(self.proc.pid)

    def stubs(self) -> dict[int, Stub]:
        """The Python backend stubs below the server (or its supervisor)."""
        return stubs_of(self.proc.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

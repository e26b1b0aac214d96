"""Runs tritonserver and keeps it serving; `./build.sh serve` runs it this way.

    python -m laminar_supervisor -- tritonserver --model-repository ... [tritonserver args]

Why a process outside tritonserver: when a Python backend stub dies (OOM killer, kill -9,
a segfault in native code), Triton 2.51 does not notice: the stub's in-flight requests hang,
readiness stays true and new requests fail. From outside the death is plain in /proc, and ending
the server is the one way to end the stuck requests: their clients get an error (gRPC
UNAVAILABLE, a closed HTTP stream) at once instead of hanging. So the supervisor watches:

- a stub gone while its model still reports ready: the stub died; the server is killed at once,
  then started again (the model's readiness is false until it is back). A model whose engine
  fails exits its stub (SUPERVISED_ENV), to be restarted the same way;
- the server gone without being asked (a crash): started again, unless it never served (bad
  arguments, a model that does not load: restarting would not help);
- SIGTERM/SIGINT: passed to the server, which drains in-flight requests; some seconds before its
  --exit-timeout-secs (drain_margin) the stubs get DRAIN_SIGNAL and end what is still running
  (laminar.serving.drain_signal), so the server exits cleanly in time; should it still be
  there KILL_GRACE_SECONDS past the exit timeout, the server and its stubs are killed.

Whatever way a server ends, stubs left behind are killed and their shared-memory regions
(/dev/shm/triton_python_backend_shm_region_*) removed. Model readiness is read over HTTP
(--http-port, default 8000), so the HTTP endpoint must stay enabled.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Sequence

from laminar_supervisor import DRAIN_SIGNAL, SUPERVISED_ENV
from laminar_supervisor.processes import Stub, is_alive, remove_leftovers, stubs_of

logger = logging.getLogger("laminar.supervisor")

POLL_SECONDS = 0.5
MAX_DRAIN_MARGIN_SECONDS = 10.0
KILL_GRACE_SECONDS = 5.0
RESTART_BACKOFF_SECONDS = 1.0


def option(args: Sequence[str], name: str, default: str) -> str:
    """The value of a tritonserver option given as `--name=value` or `--name value`."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def drain_margin(exit_timeout: float) -> float:
    """Time left for unloading after in-flight requests are ended: finalizing the model took up
    to 5 s on a loaded 2-core machine, so 10 s, or half of a short exit timeout."""
    return min(MAX_DRAIN_MARGIN_SECONDS, exit_timeout / 2)


def model_ready(http_port: str, model: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/{model}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Supervisor:
    def __init__(self, command: list[str]) -> None:
        self._command = command
        self._http_port = option(command, "--http-port", "8000")
        self._exit_timeout = float(option(command, "--exit-timeout-secs", "30"))
        self._stop = threading.Event()

    def request_stop(self, signum: int, _frame: object = None) -> None:
        logger.info("got signal %d: stopping tritonserver", signum)
        self._stop.set()

    def run(self) -> int:
        """Serves until asked to stop; returns the last server's exit status."""
        while True:
            server = subprocess.Popen(self._command, start_new_session=True, env={**os.environ, SUPERVISED_ENV: "1"})
            logger.info("started tritonserver (pid %d)", server.pid)
            rc, restart = self._watch(server)
            if not restart:
                return rc or (0 if self._stop.is_set() else 1)
            # A stop asked for while the dead server was cleaned up (or during the back-off) wins
            # over the restart: starting a server only to stop it would load the model for nothing.
            if self._stop.wait(RESTART_BACKOFF_SECONDS):
                logger.info("not restarting tritonserver: asked to stop")
                return 0

    def _watch(self, server: subprocess.Popen) -> tuple[int, bool]:
        """Returns once the server is gone and cleaned up after: its exit status, and whether to
        start it again (not when asked to stop, nor when it failed before ever serving: bad
        arguments or a model that does not load would only fail again)."""
        seen: dict[int, Stub] = {}
        served = False
        while not self._stop.wait(POLL_SECONDS):
            if server.poll() is not None:
                logger.error("tritonserver exited by itself with %s%s", server.returncode,
                             "" if served else " before serving: not restarting it")
                return self._end(server, list(seen.values()), kill=True), served
            current = stubs_of(server.pid)
            served = served or any(model_ready(self._http_port, s.model) for s in current.values())
            dead = [s for pid, s in seen.items() if pid not in current and not is_alive(pid)]
            seen.update(current)
            for stub in dead:
                del seen[stub.pid]
                if model_ready(self._http_port, stub.model):
                    logger.error("the Python backend stub of model %r (pid %d) died while the model was "
                                 "ready: restarting tritonserver", stub.model, stub.pid)
                    return self._end(server, [stub, *seen.values()], kill=True), True
        return self._end(server, list(seen.values()), kill=False), False

    def _end(self, server: subprocess.Popen, stubs: list[Stub], kill: bool) -> int:
        """Stops the server (gracefully unless `kill`), then removes whatever it left behind."""
        stubs = stubs + list(stubs_of(server.pid).values())
        if kill:
            _kill_group(server)
        elif server.poll() is None:
            server.send_signal(signal.SIGTERM)
            margin = drain_margin(self._exit_timeout)
            if not _exits_within(server, self._exit_timeout - margin):
                logger.warning("requests still running %.0f s before the exit timeout: ending them", margin)
                for stub in stubs_of(server.pid):
                    _signal(stub, DRAIN_SIGNAL)
                if not _exits_within(server, margin + KILL_GRACE_SECONDS):
                    logger.error("tritonserver did not exit within its exit timeout: killing it")
                    _kill_group(server)
        rc = server.wait()
        for leftover in remove_leftovers(stubs):
            logger.warning("cleaned up after tritonserver: %s", leftover)
        return rc


def _exits_within(server: subprocess.Popen, seconds: float) -> bool:
    try:
        server.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def _signal(pid: int, signum: int) -> None:
    """A process that has just exited needs no signal."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill_group(server: subprocess.Popen) -> None:
    """The server and its stubs (one process group: it was started in its own session)."""
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="+", help="the tritonserver command line (after --)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("LAMINAR_LOG_LEVEL", "INFO").upper(),
                        format="[laminar supervisor] %(levelname)s %(message)s")
    supervisor = Supervisor(args.command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.request_stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())

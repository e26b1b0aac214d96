"""What /proc says about a tritonserver's Python backend stubs (Linux only).

A stub's command line is `triton_python_backend_stub <repo>/<model>/<version>/model.py
<shm region> ...`: it names the model it serves and the shared-memory region it holds.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    shm_region: str


def descendants(pid: int) -> set[int]:
    """Every process below `pid`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def stubs_of(server_pid: int) -> dict[int, Stub]:
    """The Python backend stubs below a server, by pid."""
    found = {}
    for pid in descendants(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 3 and argv[0].endswith(STUB_BINARY.encode()):
            model = Path(argv[1].decode()).parents[1].name
            found[pid] = Stub(pid, model, argv[2].decode())
    return found


def is_alive(pid: int) -> bool:
    """True for a running process; a zombie has finished."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _still_runs(stub: Stub) -> bool:
    """The stub is alive, and its pid was not reused by another process."""
    try:
        argv = Path(f"/proc/{stub.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stub.shm_region.encode() in argv and is_alive(stub.pid)


def shm_path(region: str) -> Path:
    return Path("/dev/shm") / region.lstrip("/")


def remove_leftovers(stubs: list[Stub]) -> list[str]:
    """Kills stubs that outlived their server and removes their shared-memory regions; returns
    what it had to clean up (empty after a clean shutdown)."""
    cleaned = []
    for stub in stubs:
        if _still_runs(stub):
            os.kill(stub.pid, signal.SIGKILL)
            cleaned.append(f"stub process {stub.pid}")
        path = shm_path(stub.shm_region)
        if path.exists():
            path.unlink(missing_ok=True)
            cleaned.append(str(path))
    return cleaned

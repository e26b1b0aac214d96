"""Rank 0's handle on the other ranks: starts those of its own node, meets them all, sends steps, stops them.

The ranks of rank 0's node are plain `python -m laminar.worker` subprocesses rather than
multiprocessing children: inside Triton's Python backend `sys.executable` is the backend stub,
which cannot run them. Ranks on other nodes are started there (laminar.worker). Rank 0 watches
its own workers' processes; it cannot watch remote ones, so a step that fails while every local
worker lives is reported naming the remote ranks.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from laminar import step_inputs
from laminar.config import EngineArgs
from laminar.distributed import Distributed, Rendezvous, form_group, leave, open_rendezvous

logger = logging.getLogger(__name__)
PARENT_ENV = "LAMINAR_WORKER_PARENT"  # set for the workers rank 0 starts: they exit with it
STOP_TIMEOUT_S = 30.0


def _python() -> str:
    """A Python interpreter for the workers: this one, unless it is an embedding binary."""
    if Path(sys.executable).name.startswith("python"):
        return sys.executable
    found = shutil.which("python3")
    if found is None:
        raise RuntimeError("a multi-rank engine needs a python3 on PATH to start its workers")
    return found


class WorkerGroup:
    """Rank 0's side of the group: start, send steps, watch, stop."""

    def __init__(self, args: EngineArgs, max_model_len: int) -> None:
        world, local = args.world_size, args.local_world_size or args.world_size
        if dist.is_initialized():
            raise ValueError("another multi-rank engine is running in this process: shut it down first "
                             "(one multi-rank engine per process)")
        device = args.resolved_device()
        if device.type == "cuda" and torch.cuda.device_count() < local:
            raise ValueError(f"{local} ranks on this node need {local} GPUs, {torch.cuda.device_count()} visible")
        rendezvous = args.rendezvous()
        self.where = Rendezvous(*rendezvous) if rendezvous else Rendezvous.loopback()
        self.remote = range(local, world)
        self.procs: list[subprocess.Popen] = []
        self.group = Distributed()
        self.stopped = False
        spec = {"args": dataclasses.asdict(args), "max_model_len": max_model_len}
        try:
            store, generation = open_rendezvous(self.where, spec, args.tp_timeout_s)
            for rank in range(1, local):
                self.procs.append(self._start(rank, world))
            self.group = self._form(args, store, generation, torch.device("cuda", 0) if device.type == "cuda" else device)
        except BaseException:
            self._kill()
            raise
        atexit.register(self.stop)

    def _start(self, rank: int, world: int) -> subprocess.Popen:
        env = dict(os.environ, MASTER_ADDR=self.where.host, MASTER_PORT=str(self.where.port), WORLD_SIZE=str(world),
                   RANK=str(rank), LOCAL_RANK=str(rank), **{PARENT_ENV: str(os.getpid())})
        return subprocess.Popen([_python(), "-m", "laminar.worker", "--once"], env=env)

    def _form(self, args: EngineArgs, store, generation: str, device: torch.device) -> Distributed:
        """Waits for every rank (laminar.distributed.form_group); names the ranks that did not come."""
        try:
            return form_group(0, 0, args.tensor_parallel_size, args.pipeline_parallel_size, store, generation, device,
                              args.tp_timeout_s, self.check)
        except Exception as e:
            self.check()
            raise RuntimeError(f"the {args.world_size} ranks did not form a group at {self.where.host}:{self.where.port}"
                               f"{self._remote_note()}: {e}") from e

    def _remote_note(self) -> str:
        first, last = self.remote.start, self.remote.stop - 1
        if not self.remote:
            return ""
        if first == last:
            return f" (rank {first} runs on another node: see its log)"
        return f" (ranks {first}-{last} run on other nodes: see their logs)"

    def check(self) -> None:
        """Raises if a local worker has exited: its collectives would never complete."""
        for rank, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is not None:
                raise RuntimeError(f"worker rank {rank} exited with code {code}")

    def explain(self, error: Exception, wait_s: float = 2.0) -> Exception:
        """A step failed: name the local workers that died (they may take a moment to be reaped)
        and, with ranks on other nodes, say that one of them may be lost: rank 0 cannot see them."""
        deadline = time.monotonic() + wait_s
        dead = []
        while not dead and time.monotonic() < deadline:
            dead = [f"worker rank {r} exited with code {p.poll()}" for r, p in enumerate(self.procs, start=1)
                    if p.poll() is not None]
            time.sleep(0.05)
        if not dead and not self.remote:
            return error
        what = "; ".join(dead) if dead else "a rank stopped answering"
        out = RuntimeError(f"{what}{self._remote_note()}" + (f": {type(error).__name__}: {error}" if self.remote else ""))
        out.__cause__ = error
        return out

    def send(self, inputs: step_inputs.StepInputs) -> None:
        self.check()
        step_inputs.send(self.group.control, inputs)

    def stop(self) -> None:
        """Asks the workers to stop (remote ones then wait for the next rank 0), waits for the local
        ones, kills stragglers; leaves no process behind. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        atexit.unregister(self.stop)
        try:
            if all(p.poll() is None for p in self.procs):
                step_inputs.send(self.group.control, None)
                for proc in self.procs:
                    proc.wait(timeout=STOP_TIMEOUT_S)
        except Exception:  # a worker is gone or stuck: the kill below covers both
            logger.exception("workers did not stop cleanly")
        finally:
            self._kill()
            leave(self.group)

    def _kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

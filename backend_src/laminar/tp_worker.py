"""Tensor-parallel worker processes: ranks 1..N-1 of the engine's model.

The engine's process is rank 0. Workers are plain `python -m laminar.tp_worker`
subprocesses rather than multiprocessing children: inside Triton's Python
backend `sys.executable` is the backend stub, which cannot run them. Each worker
builds its model shard and KV cache, then replays whatever step rank 0 sends
until told to stop; it exits by itself if rank 0's process goes away.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from laminar import step_inputs
from laminar.config import EngineArgs, ModelConfig
from laminar.distributed import TensorParallel, destroy_tensor_parallel, free_port, init_tensor_parallel
from laminar.model_runner import ModelRunner

logger = logging.getLogger(__name__)
SPEC_ENV = "LAMINAR_TP_WORKER"
STOP_TIMEOUT_S = 30.0
PARENT_POLL_S = 1.0


def _python() -> str:
    """A Python interpreter for the workers: this one, unless it is an embedding binary."""
    if Path(sys.executable).name.startswith("python"):
        return sys.executable
    found = shutil.which("python3")
    if found is None:
        raise RuntimeError("tensor parallelism needs a python3 on PATH to start its workers")
    return found


class WorkerGroup:
    """Rank 0's handle on the workers: start, send steps, watch, stop."""

    def __init__(self, args: EngineArgs, max_model_len: int) -> None:
        size = args.tensor_parallel_size
        if dist.is_initialized():
            raise ValueError("another tensor-parallel engine is running in this process: shut it down first "
                             "(one tensor-parallel engine per process)")
        if args.resolved_device().type == "cuda" and torch.cuda.device_count() < size:
            raise ValueError(f"tensor_parallel_size {size} needs {size} GPUs, {torch.cuda.device_count()} visible")
        port = free_port()
        spec = {"args": dataclasses.asdict(args), "max_model_len": max_model_len, "port": port,
                "parent": os.getpid()}
        self.procs: list[subprocess.Popen] = []
        self.stopped = False
        try:
            for rank in range(1, size):
                env = dict(os.environ, **{SPEC_ENV: json.dumps({**spec, "rank": rank})})
                self.procs.append(subprocess.Popen([_python(), "-m", "laminar.tp_worker"], env=env))
            device = args.resolved_device()
            self.tp = init_tensor_parallel(0, size, port, torch.device("cuda", 0) if device.type == "cuda" else device,
                                           args.tp_timeout_s)
        except BaseException:
            self._kill()
            raise
        atexit.register(self.stop)

    def check(self) -> None:
        """Raises if a worker has exited: its collectives would never complete."""
        for rank, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is not None:
                raise RuntimeError(f"tensor-parallel worker rank {rank} exited with code {code}")

    def explain(self, error: Exception, wait_s: float = 2.0) -> Exception:
        """A collective failed: name the worker that died (it may take a moment to be reaped)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.check()
            except RuntimeError as dead:
                dead.__cause__ = error
                return dead
            if time.monotonic() > deadline:
                return error
            time.sleep(0.05)

    def send(self, inputs: step_inputs.StepInputs) -> None:
        self.check()
        step_inputs.send(self.tp, inputs)

    def stop(self) -> None:
        """Asks the workers to exit, waits for them, kills stragglers; leaves no process behind. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        try:
            if all(p.poll() is None for p in self.procs):
                step_inputs.send(self.tp, None)
                for proc in self.procs:
                    proc.wait(timeout=STOP_TIMEOUT_S)
        except Exception:  # a worker is gone or stuck: the kill below covers both
            logger.exception("tensor-parallel workers did not stop cleanly")
        finally:
            self._kill()
            destroy_tensor_parallel(self.tp)

    def _kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _exit_with_parent(parent: int) -> None:
    """Exits this worker once rank 0's process is gone, even if it was killed outright.

    A watcher thread rather than PR_SET_PDEATHSIG, which fires when the spawning
    *thread* exits, not the process.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="laminar-parent-watch", daemon=True).start()


def main() -> None:
    spec = json.loads(os.environ[SPEC_ENV])
    _exit_with_parent(spec["parent"])
    values = spec["args"]
    args = EngineArgs(**values)
    rank, size = spec["rank"], args.tensor_parallel_size
    device = args.resolved_device()
    tp: TensorParallel = init_tensor_parallel(rank, size, spec["port"], torch.device("cuda", rank)
                                              if device.type == "cuda" else device, args.tp_timeout_s)
    torch.manual_seed(args.seed)
    runner = ModelRunner(ModelConfig.from_dir(args.model), args, spec["max_model_len"], tp)
    while (inputs := step_inputs.receive(tp)) is not None:
        runner.run(runner.build_batch(inputs), inputs.carried)
        if inputs.num_sampled:  # asynchronous scheduling: the next step may read them on the device
            runner.share_sampled(None, inputs.num_sampled)
    destroy_tensor_parallel(tp)


if __name__ == "__main__":
    main()

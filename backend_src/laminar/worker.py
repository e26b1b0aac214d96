"""A worker rank of a multi-rank engine (tensor and/or pipeline parallel): `python -m laminar.worker`.

Rank 0, the engine (in tritonserver's model, or offline), starts the ranks of its own node as
subprocesses of this module. On other nodes start one per rank, by hand or by a launcher:

    python -m laminar.worker --master-addr 10.0.0.1 --master-port 29500 --world-size 4 --rank 2 --local-rank 0

MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK, as torchrun sets them, are the
defaults. The engine arguments come from rank 0 through the rendezvous, so a worker needs nothing
else; --model names the checkpoint's directory on this node where it differs from rank 0's.

A worker serves one group after another: when its group ends (rank 0 stopped, failed, or was
restarted by the supervisor; a peer died) it waits at the same address for the next rank 0, so
that a restarted server finds its remote ranks again. --once exits instead (the workers rank 0
starts itself, which also exit as soon as rank 0's process is gone).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time

import torch

from laminar import step_inputs
from laminar.config import EngineArgs, ModelConfig
from laminar.distributed import Distributed, Rendezvous, find_rendezvous, form_group, leave
from laminar.model_runner import ModelRunner
from laminar.worker_group import PARENT_ENV

logger = logging.getLogger("laminar.worker")
PARENT_POLL_S = 1.0
RETRY_S = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--master-addr", default=env.get("MASTER_ADDR"), help="rank 0's host (default: MASTER_ADDR)")
    ap.add_argument("--master-port", type=int, default=env.get("MASTER_PORT"), help="default: MASTER_PORT")
    ap.add_argument("--world-size", type=int, default=env.get("WORLD_SIZE"), help="default: WORLD_SIZE")
    ap.add_argument("--rank", type=int, default=env.get("RANK"), help="1 .. world size - 1 (default: RANK)")
    ap.add_argument("--local-rank", type=int, default=int(env.get("LOCAL_RANK", 0)),
                    help="the GPU of this node to drive (default: LOCAL_RANK, else 0)")
    ap.add_argument("--model", help="the checkpoint's directory on this node (default: rank 0's path)")
    ap.add_argument("--join-timeout", type=float, default=60.0, help="seconds to wait for rank 0 per attempt")
    ap.add_argument("--once", action="store_true", help="serve one group, then exit")
    opts = ap.parse_args(argv)
    missing = [name for name in ("master_addr", "master_port", "world_size", "rank") if getattr(opts, name) is None]
    if missing:
        ap.error(f"missing {', '.join('--' + m.replace('_', '-') for m in missing)} (or their environment variables)")
    if not 0 < opts.rank < opts.world_size:
        ap.error(f"--rank must be in 1 .. {opts.world_size - 1} (rank 0 is the engine), got {opts.rank}")
    return opts


def serve(opts: argparse.Namespace, store, generation: str, spec: dict) -> None:
    """Joins the group of this generation and replays rank 0's steps until told to stop (raises if
    the group fails: a peer died or stopped answering)."""
    values = dict(spec["args"], **({"model": opts.model} if opts.model else {}))
    args = EngineArgs(**values)
    if args.world_size != opts.world_size:
        raise ValueError(f"rank 0 runs {args.world_size} ranks, this worker was started for {opts.world_size}")
    device = args.resolved_device()
    if device.type == "cuda":
        device = torch.device("cuda", opts.local_rank)
    group = Distributed()
    try:
        group = form_group(opts.rank, opts.local_rank, args.tensor_parallel_size, args.pipeline_parallel_size,
                           store, generation, device, args.tp_timeout_s)
        logger.info("rank %d of %d: pipeline stage %d, TP rank %d", opts.rank, opts.world_size, group.pp.stage,
                    group.tp.rank)
        torch.manual_seed(args.seed)
        runner = ModelRunner(ModelConfig.from_dir(args.model), args, spec["max_model_len"], group)
        while (inputs := step_inputs.receive(group.control)) is not None:
            runner.run(runner.build_batch(inputs), inputs.carried)
            if inputs.num_sampled and group.pp.first:  # asynchronous scheduling: the next step reads them
                runner.share_sampled(None, inputs.num_sampled)
    finally:
        leave(group)


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


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("LAMINAR_LOG_LEVEL", "INFO").upper(),
                        format=f"[laminar worker {opts.rank}] %(levelname)s %(message)s")
    if PARENT_ENV in os.environ:
        _exit_with_parent(int(os.environ[PARENT_ENV]))
    where, served = Rendezvous(opts.master_addr, opts.master_port), ""
    while True:
        try:
            store, generation, spec = find_rendezvous(where, served, opts.join_timeout)
        except Exception as e:  # no rank 0 yet, or still the old one's store
            if opts.once:
                logger.error("no rank 0 at %s:%d: %s", where.host, where.port, e)
                return 1
            logger.debug("waiting for rank 0 at %s:%d: %s", where.host, where.port, e)
            time.sleep(RETRY_S)
            continue
        served = generation
        try:
            serve(opts, store, generation, spec)
        except Exception:
            logger.exception("the group failed")
            if opts.once:
                return 1
        else:
            if opts.once:
                return 0
        del store
        logger.info("the group ended: waiting for the next rank 0 at %s:%d", where.host, where.port)
        time.sleep(RETRY_S)


if __name__ == "__main__":
    sys.exit(main())

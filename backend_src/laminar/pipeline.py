"""Pipeline parallelism: each stage holds a contiguous group of layers; a step flows through them in order.

A stage holds the weights and the KV cache of its layers only (the first stage the embedding, the
last the final norm and LM head). The schedule is the simplest correct one: rank 0 broadcasts the
step to every rank, stage 0 runs its layers and sends the rows still moving down the stack to
stage 1, and so on; the last stage computes the logits and sends them to rank 0, which samples.
Each TP rank of a stage sends to the same TP rank of the next (after the row-parallel all-reduce
every TP rank holds the whole hidden state).

What crosses a stage boundary b is the decode rows and the rows of every prefill segment whose
span reaches b this step (start < b <= stop): a segment whose span goes on past b continues on the
next stage in the same step; one whose span stops exactly at b is kept by the next stage, where
its next span starts. So a layered prefill segment crosses stage boundaries as it crosses layer
groups, and each stage keeps (laminar.model_runner) the carried rows of the batches whose next
span starts in its layers.

Only one step is in flight, so each stage idles while the others run (about (P-1)/P of the time
with P equal stages); the README's Pipeline parallelism section says what micro-batching would add.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

State = tuple[torch.Tensor, torch.Tensor]  # (hidden, residual) rows


def stage_layers(num_layers: int, stages: int, stage: int) -> range:
    """The contiguous layers of one stage: as even as the count allows, the later stages one longer."""
    return range(num_layers * stage // stages, num_layers * (stage + 1) // stages)


@dataclass
class PipelineParallel:
    """This rank's stage; size 1 means one stage and no messages."""

    stage: int = 0
    size: int = 1
    tp_size: int = 1
    tp_rank: int = 0

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.size - 1

    def layers(self, num_layers: int) -> range:
        return stage_layers(num_layers, self.size, self.stage)

    def _peer(self, stage: int) -> int:
        return stage * self.tp_size + self.tp_rank

    def send_states(self, parts: list[State], experts: torch.Tensor) -> None:
        """The rows that leave this stage, stacked as [2, rows, hidden], and the experts touched so far."""
        peer = self._peer(self.stage + 1)
        if sum(h.shape[0] for h, _ in parts):
            hidden = torch.cat([h for h, _ in parts])
            dist.send(torch.stack((hidden, torch.cat([r for _, r in parts]))), peer)
        dist.send(experts.reshape(1), peer)

    def receive_states(self, sizes: list[int], like: torch.Tensor) -> tuple[list[State], torch.Tensor]:
        """The previous stage's rows, split into parts of these sizes (like: dtype, device, hidden size)."""
        peer = self._peer(self.stage - 1)
        both = torch.empty((2, sum(sizes), like.shape[-1]), dtype=like.dtype, device=like.device)
        if both.shape[1]:
            dist.recv(both, peer)
        experts = torch.empty(1, dtype=torch.int64, device=like.device)
        dist.recv(experts, peer)
        return list(zip(both[0].split(sizes), both[1].split(sizes))), experts

    def send_result(self, logits: torch.Tensor | None, experts: torch.Tensor) -> None:
        """Last stage, TP rank 0: the logits (if the step has any) and the experts count to rank 0."""
        if self.tp_rank != 0:
            return
        if logits is not None:
            dist.send(logits.contiguous(), 0)
        dist.send(experts.reshape(1), 0)

    def receive_result(self, rows: int, vocab: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Rank 0: what the last stage sends; also the end of the step's device work everywhere."""
        logits = None
        if rows:
            logits = torch.empty((rows, vocab), dtype=torch.float32, device=device)
            dist.recv(logits, self._peer(self.size - 1))
        experts = torch.empty(1, dtype=torch.int64, device=device)
        dist.recv(experts, self._peer(self.size - 1))
        return logits, experts

"""One iteration's batch as plain integers, and its wire format for the TP workers.

Every rank builds its device tensors from the same StepInputs, so rank 0 and the
workers run identical forwards. On the wire it is one int64 tensor (a fixed
header, then the arrays), broadcast over the gloo control group: two small
messages per step, no pickling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from laminar.distributed import TensorParallel

_HEADER = 8
_STOP = -1  # num_entries value that tells the workers to exit


@dataclass
class StepInputs:
    """Decode entries first (one token each), then the prefill chunks of this iteration."""

    token_ids: list[int]
    starts: list[int]               # per entry: position of its first token
    q_lens: list[int]               # per entry: tokens computed now
    block_tables: list[list[int]]   # per entry
    num_decode: int
    prefill_layers: range           # layers the prefill rows cross now (empty: no prefill)
    carry_rows: list[int] | None    # rows of the carried prefill state still in the batch; None: all
    logits_rows: list[int]          # rows that get logits (decodes, completed prompts on the last group)

    @property
    def first_group(self) -> bool:
        return len(self.prefill_layers) > 0 and self.prefill_layers.start == 0


def pack(inputs: StepInputs) -> torch.Tensor:
    carry = inputs.carry_rows
    header = [
        len(inputs.starts), len(inputs.token_ids), inputs.num_decode,
        inputs.prefill_layers.start, inputs.prefill_layers.stop,
        -1 if carry is None else len(carry), len(inputs.logits_rows),
        sum(len(t) for t in inputs.block_tables),
    ]
    body = (inputs.token_ids + inputs.starts + inputs.q_lens + [len(t) for t in inputs.block_tables]
            + [b for t in inputs.block_tables for b in t] + (carry or []) + inputs.logits_rows)
    return torch.tensor(header + body, dtype=torch.int64)


def unpack(message: torch.Tensor) -> StepInputs:
    values = message.tolist()
    entries, tokens, num_decode, pre_start, pre_stop, num_carry, num_logits, num_blocks = values[:_HEADER]
    pos = _HEADER

    def take(n: int) -> list[int]:
        nonlocal pos
        pos += n
        return values[pos - n: pos]

    token_ids, starts, q_lens, table_lens = take(tokens), take(entries), take(entries), take(entries)
    flat = take(num_blocks)
    tables, offset = [], 0
    for n in table_lens:
        tables.append(flat[offset: offset + n])
        offset += n
    carry = None if num_carry < 0 else take(num_carry)
    return StepInputs(token_ids, starts, q_lens, tables, num_decode, range(pre_start, pre_stop), carry,
                      take(num_logits))


def send(tp: TensorParallel, inputs: StepInputs | None) -> None:
    """Rank 0: the next step for the workers, or None to stop them."""
    message = pack(inputs) if inputs is not None else torch.full((_HEADER,), _STOP, dtype=torch.int64)
    dist.broadcast(torch.tensor([message.numel()], dtype=torch.int64), 0, group=tp.control)
    dist.broadcast(message, 0, group=tp.control)


def receive(tp: TensorParallel) -> StepInputs | None:
    """Workers: blocks until rank 0 sends; None means stop."""
    size = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(size, 0, group=tp.control)
    message = torch.empty(int(size.item()), dtype=torch.int64)
    dist.broadcast(message, 0, group=tp.control)
    if int(message[0]) == _STOP:
        return None
    return unpack(message)

"""One iteration's batch as plain integers, and its wire format for the worker ranks.

Every rank builds its device tensors from the same StepInputs, so rank 0 and the
workers run identical forwards. On the wire it is one int64 tensor (a fixed
header, then the arrays), broadcast over the gloo control group: two small
messages per step, no pickling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

_HEADER = 8
_SEGMENT = 5  # batch id, entries, first layer, layer stop, carried rows (-1: all)
_STOP = -1  # num_entries value that tells the workers to exit


@dataclass
class SegmentInputs:
    """One prefill batch in this step: its next num_entries entries cross `layers`."""

    batch_id: int
    num_entries: int
    layers: range
    carry_rows: list[int] | None    # rows of the carried state still in the batch; None: all

    @property
    def first(self) -> bool:
        """Enters at layer 0 as token ids, not as carried hidden states."""
        return self.layers.start == 0


@dataclass
class StepInputs:
    """Decode entries first (one token each), then each segment's chunks, in segment order.

    A negative token id -1 - r (sequence.pending_token) stands for row r of the previous step's
    sampled tokens, which every rank keeps on its device (ModelRunner.sampled): with
    asynchronous scheduling a step is planned before the host has read the tokens it decodes.
    num_sampled > 0 asks the workers to receive this step's sampled tokens from rank 0 after
    its forward, so that the next step can read them.
    """

    token_ids: list[int]            # decode tokens, then the tokens of segments entering at layer 0
    starts: list[int]               # per entry: position of its first token
    q_lens: list[int]               # per entry: tokens computed now
    block_tables: list[list[int]]   # per entry
    num_decode: int
    segments: list[SegmentInputs]
    carried: list[int]              # batch ids whose rows stay on the device after this step
    logits_rows: list[int]          # rows of the last layer's output that get logits
    num_sampled: int = 0            # rows sampled by rank 0 and shared with every rank after the step


def pack(inputs: StepInputs) -> torch.Tensor:
    segs = inputs.segments
    header = [len(inputs.starts), len(inputs.token_ids), inputs.num_decode, len(segs), len(inputs.carried),
              len(inputs.logits_rows), sum(len(t) for t in inputs.block_tables), inputs.num_sampled]
    seg_fields = [v for s in segs for v in (s.batch_id, s.num_entries, s.layers.start, s.layers.stop,
                                            -1 if s.carry_rows is None else len(s.carry_rows))]
    body = (inputs.token_ids + inputs.starts + inputs.q_lens + [len(t) for t in inputs.block_tables]
            + [b for t in inputs.block_tables for b in t] + seg_fields
            + [r for s in segs for r in (s.carry_rows or [])] + inputs.carried + inputs.logits_rows)
    return torch.tensor(header + body, dtype=torch.int64)


def unpack(message: torch.Tensor) -> StepInputs:
    values = message.tolist()
    entries, tokens, num_decode, num_segments, num_carried, num_logits, num_blocks, num_sampled = values[:_HEADER]
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
    fields = take(num_segments * _SEGMENT)
    segments = []
    for i in range(num_segments):
        batch_id, n, start, stop, rows = fields[i * _SEGMENT: (i + 1) * _SEGMENT]
        segments.append(SegmentInputs(batch_id, n, range(start, stop), None if rows < 0 else take(rows)))
    return StepInputs(token_ids, starts, q_lens, tables, num_decode, segments, take(num_carried), take(num_logits),
                      num_sampled)


def send(control: object, inputs: StepInputs | None) -> None:
    """Rank 0: the next step for the workers (over the control group of every rank), or None to stop them."""
    message = pack(inputs) if inputs is not None else torch.full((_HEADER,), _STOP, dtype=torch.int64)
    dist.broadcast(torch.tensor([message.numel()], dtype=torch.int64), 0, group=control)
    dist.broadcast(message, 0, group=control)


def receive(control: object) -> StepInputs | None:
    """Workers: blocks until rank 0 sends; None means stop."""
    size = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(size, 0, group=control)
    message = torch.empty(int(size.item()), dtype=torch.int64)
    dist.broadcast(message, 0, group=control)
    if int(message[0]) == _STOP:
        return None
    return unpack(message)

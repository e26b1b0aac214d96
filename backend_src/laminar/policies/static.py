"""The paper's policy: a fixed token budget and a fixed table of layer groups.

Chunked mode fills the token budget left after the decodes. Layered mode cuts one batch of up
to max_num_batched_tokens tokens into G groups by its token count (<=512: 1, <=1024: 2,
<=2048: 4, <=4096: 8, more: num_stages) and moves it one group per iteration.
"""
from __future__ import annotations

from laminar.config import EngineArgs
from laminar.policies.base import BatchSource, Decision, NewBatch
from laminar.sequence import Sequence
from laminar.step_plan import PrefillBatch, StepShape, segment, split_layers

NUM_STAGES = 16                                   # num_stages when unset
GROUP_TOKEN_THRESHOLDS = (512, 1024, 2048, 4096)  # group_token_thresholds when unset


def paper_num_groups(args: EngineArgs, num_prefill_tokens: int, num_layers: int) -> int:
    """Layer groups for a prefill batch of this many tokens: the paper's static table."""
    num_stages = NUM_STAGES if args.num_stages is None else args.num_stages
    thresholds = GROUP_TOKEN_THRESHOLDS if args.group_token_thresholds is None else args.group_token_thresholds
    groups = num_stages
    for i, threshold in enumerate(thresholds):
        if num_prefill_tokens <= threshold:
            groups = 2**i
            break
    return max(1, min(groups, num_stages, num_layers))


class StaticPolicy:
    """The paper's policy: fixed token budget, fixed group table."""

    def __init__(self, args: EngineArgs, num_layers: int) -> None:
        self.args, self.num_layers = args, num_layers
        self.layered = args.schedule_mode == "layered"

    def observe(self, shape: StepShape, seconds: float) -> None:
        """Measured decode cycles change nothing here: the budget and the group table are fixed."""

    def plan(self, decode: list[Sequence], batches: list[PrefillBatch], source: BatchSource) -> Decision:
        full = range(self.num_layers)
        if not self.layered:
            chunks = source.propose(self.args.max_num_batched_tokens - len(decode))
            return Decision(new_batch=NewBatch(chunks, full) if chunks else None)
        if batches:
            batch = batches[0]
            group = next(g for g in batch.groups if g.start == batch.layers_done)
            return Decision([segment(batch, group, self.num_layers)])
        chunks = source.propose(self.args.max_num_batched_tokens)
        if not chunks:
            return Decision()
        groups = split_layers(self.num_layers, paper_num_groups(self.args, sum(c.length for c in chunks),
                                                                 self.num_layers))
        return Decision(new_batch=NewBatch(chunks, groups[0], groups))

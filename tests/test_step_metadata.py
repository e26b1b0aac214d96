"""The step's device metadata: right values, every part 16-byte aligned (one Triton variant per kernel)."""
from __future__ import annotations

from engine_utils import greedy, make_engine

from laminar.executor import plan_inputs


def test_metadata_parts_are_aligned_and_correct(moe_checkpoint_5):
    engine = make_engine(moe_checkpoint_5, schedule_mode="chunked", max_num_batched_tokens=64, block_size=4)
    for rid, n in (("a", 5), ("b", 7), ("c", 3)):  # odd counts: unaligned offsets if packed back to back
        engine.add_request(rid, list(range(1, n + 1)), greedy(2))
    plan = engine.scheduler.schedule()
    batch = engine.executor.runner.build_batch(plan_inputs(plan))
    (stretch,) = batch.stretches  # chunked: one segment across the whole stack
    meta, positions = stretch.meta, stretch.positions
    for t in (meta.query_start_loc, meta.seq_lens, meta.block_tables, meta.slot_mapping, positions):
        assert t.data_ptr() % 16 == 0
    assert meta.query_start_loc.tolist() == [0, 5, 12, 15]
    assert meta.seq_lens.tolist() == [5, 7, 3]
    assert positions.tolist() == [*range(5), *range(7), *range(3)]
    tables = [s.block_table for s in (engine.seqs[r] for r in "abc")]
    expected = [tables[i][p // 4] * 4 + p % 4 for i, n in enumerate((5, 7, 3)) for p in range(n)]
    assert meta.slot_mapping.tolist() == expected
    assert meta.block_tables.tolist() == [t + [0] * (2 - len(t)) for t in tables]

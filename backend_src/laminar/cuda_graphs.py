"""CUDA graphs of decode-only layers, one per (layer, padded batch size).

Graphing single layers rather than whole stacks lets a layered iteration replay
the decode-only groups before and after the prefill group, whichever group that
is, while the group that carries prefill tokens runs eagerly. Each graph reads
and writes the same static hidden/residual buffers, so consecutive layers chain
with no copies. Padding rows are copies of row 0 (state, position, KV slot): they
route to the same experts and write the same KV values, so they add no expert
traffic and touch no other sequence's cache.
"""
from __future__ import annotations

import torch

from laminar.ops import AttentionMetadata


GRAPH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def capture_sizes(max_batch: int) -> list[int]:
    """Padded batch sizes to capture: a geometric-ish ladder up to max_batch (which is always one)."""
    return sorted({s for s in GRAPH_SIZES if s < max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(self, model, kv_caches, expert_hits: torch.Tensor, max_batch: int, max_model_len: int,
                 block_size: int) -> None:
        self.model, self.kv_caches, self.expert_hits = model, kv_caches, expert_hits
        self.sizes = capture_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        device, hidden = model.embed_tokens.device, model.cfg.hidden_size
        dtype = model.embed_tokens.dtype
        n = self.max_batch
        self.hidden = torch.zeros(n, hidden, dtype=dtype, device=device)
        self.residual = torch.zeros(n, hidden, dtype=dtype, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.query_start = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.tables = torch.zeros((n, -(-max_model_len // block_size)), dtype=torch.int32, device=device)
        self.slots = torch.zeros(n, dtype=torch.long, device=device)
        self.max_model_len = max_model_len
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.batch = 0
        self.rows = torch.arange(n, device=device)
        self._capture()

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(self.query_start[: bs + 1], self.seq_lens[:bs], self.tables[:bs],
                                 self.slots[:bs], max_query_len=1, max_seq_len=self.max_model_len)

    def _run_layer(self, i: int, bs: int) -> None:
        h, r = self.model.layers[i](self.hidden[:bs], self.residual[:bs], self.positions[:bs], self.kv_caches[i],
                                    self._meta(bs), self.model.rotary.cos_sin, self.expert_hits)
        self.hidden[:bs].copy_(h)
        self.residual[:bs].copy_(r)

    @torch.inference_mode()
    def _capture(self) -> None:
        """Largest batch first so that smaller graphs reuse its pool memory."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in reversed(self.sizes):
                for i in range(len(self.model.layers)):
                    self._run_layer(i, bs)  # warm-up: Triton compiles and autotunes outside capture
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                        self._run_layer(i, bs)
                    self.graphs[(i, bs)] = graph
        torch.cuda.current_stream().wait_stream(stream)
        self.expert_hits.zero_()

    def fits(self, num_decode: int) -> bool:
        return 0 < num_decode <= self.max_batch

    def load(self, positions: torch.Tensor, meta: AttentionMetadata) -> None:
        """Copies this step's decode metadata into the static buffers, padding with row 0."""
        n = positions.shape[0]
        self.batch = bs = next(s for s in self.sizes if s >= n)
        self.src = torch.where(self.rows[:bs] < n, self.rows[:bs], 0)
        width = meta.block_tables.shape[1]
        self.positions[:bs].copy_(positions[self.src])
        self.seq_lens[:bs].copy_(meta.seq_lens[self.src])
        self.slots[:bs].copy_(meta.slot_mapping[self.src])
        self.tables[:bs, :width].copy_(meta.block_tables[self.src])

    def run(self, layers: range, hidden: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Replays the graphs of these layers for the loaded batch; returns views of the static buffers."""
        n, bs = hidden.shape[0], self.batch
        self.hidden[:bs].copy_(hidden[self.src])
        self.residual[:bs].copy_(residual[self.src])
        for i in layers:
            self.graphs[(i, bs)].replay()
        return self.hidden[:n], self.residual[:n]

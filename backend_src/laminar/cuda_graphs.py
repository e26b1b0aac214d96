"""CUDA graphs per layer: whole decode-only layers, and the halves of mixed layers around attention.

Graphing single layers rather than whole stacks lets a layered iteration replay
the decode-only groups before and after the prefill group, whichever group that
is. Each graph reads and writes static buffers, so consecutive layers chain with
no copies. Padding rows are copies of row 0 (state, position, KV slot): they
route to the same experts and write the same KV values, so they add no expert
traffic and touch no other sequence's cache. A pipeline stage captures its own layers
(model.layer_range); the rows between stages move outside the graphs.

The layers a prefill batch crosses (all of them in chunked mode, one group in
layered mode) are graphed piecewise, as vLLM does: attention of a mixed batch
depends on every sequence's query and context lengths and runs eagerly, while
the rest of the layer (norms, projections, rope, KV store, MoE) depends only on
the token count and is replayed from graphs captured per padded count. Without
this a step of a few hundred tokens is bound by the host launching ~20 kernels
per layer, not by the GPU.
"""
from __future__ import annotations

from typing import Callable

import torch

from laminar.ops import AttentionMetadata

# Padded sizes to capture. The top rungs are the caps: larger decode batches run eagerly, where
# launch overhead matters less, and larger mixed batches keep the GPU busier than the host's launches.
DECODE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
MIXED_SIZES = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)


def capture_sizes(limit: int, ladder: tuple[int, ...]) -> list[int]:
    """Padded sizes to capture for batches up to limit: the ladder's rungs below it, and the smaller of
    limit and the top rung."""
    top = min(limit, ladder[-1])
    return sorted({s for s in ladder if s < top} | {top})


class _LayerGraphs:
    """Static row buffers, a padding index and a shared memory pool for graphs captured per padded size."""

    def __init__(self, model, kv_caches, expert_hits: torch.Tensor, sizes: list[int]) -> None:
        self.model, self.kv_caches, self.expert_hits = model, kv_caches, expert_hits
        self.sizes = sizes
        self.max_rows = n = sizes[-1]
        self.device = device = model.embed_tokens.device
        dtype, hidden = model.embed_tokens.dtype, model.cfg.hidden_size
        self.hidden = torch.zeros(n, hidden, dtype=dtype, device=device)
        self.residual = torch.zeros(n, hidden, dtype=dtype, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.zeros(n, dtype=torch.long, device=device)
        self.rows = torch.arange(n, device=device)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.size = 0
        self.src = self.rows

    def fits(self, rows: int) -> bool:
        return 0 < rows <= self.max_rows

    def _pad(self, n: int, positions: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Picks the padded size for n rows and fills the static position and slot buffers."""
        self.size = bs = next(s for s in self.sizes if s >= n)
        self.src = torch.where(self.rows[:bs] < n, self.rows[:bs], 0)
        self.positions[:bs].copy_(positions[self.src])
        self.slots[:bs].copy_(slot_mapping[self.src])

    def _load_rows(self, hidden: torch.Tensor, residual: torch.Tensor) -> None:
        bs = self.size
        self.hidden[:bs].copy_(hidden[self.src])
        self.residual[:bs].copy_(residual[self.src])

    @torch.inference_mode()
    def _capture(self, pieces: list[tuple[tuple, Callable[[int], None]]]) -> None:
        """pieces: (key, fn(bs)) to capture at every size; largest size first so smaller graphs reuse its pool."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for bs in reversed(self.sizes):
                for key, fn in pieces:
                    fn(bs)  # warm-up: Triton compiles and autotunes outside capture
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                        fn(bs)
                    self.graphs[(*key, bs)] = graph
        torch.cuda.current_stream().wait_stream(stream)
        self.expert_hits.zero_()


class DecodeGraphs(_LayerGraphs):
    """Whole decode-only layers, one graph per (layer, padded batch size)."""

    def __init__(self, model, kv_caches, expert_hits: torch.Tensor, max_batch: int, max_model_len: int,
                 block_size: int) -> None:
        super().__init__(model, kv_caches, expert_hits, capture_sizes(max_batch, DECODE_SIZES))
        self.loaded: AttentionMetadata | None = None  # the step whose metadata the buffers hold
        n = self.max_rows
        self.query_start = torch.arange(n + 1, dtype=torch.int32, device=self.device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=self.device)
        self.tables = torch.zeros((n, -(-max_model_len // block_size)), dtype=torch.int32, device=self.device)
        self.max_model_len = max_model_len
        self._capture([((i,), lambda bs, i=i: self._run_layer(i, bs)) for i in model.layer_range])

    def _run_layer(self, i: int, bs: int) -> None:
        meta = AttentionMetadata(self.query_start[: bs + 1], self.seq_lens[:bs], self.tables[:bs],
                                 self.slots[:bs], max_query_len=1, max_seq_len=self.max_model_len, num_decodes=bs)
        h, r = self.model.layers[i](self.hidden[:bs], self.residual[:bs], self.positions[:bs], self.kv_caches[i],
                                    meta, self.expert_hits)
        self.hidden[:bs].copy_(h)
        self.residual[:bs].copy_(r)

    def run(self, layers: range, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """Replays the graphs of these layers; returns views of the static buffers."""
        if meta is not self.loaded:  # once per step: its decode stretches share one metadata
            self._load(positions, meta)
        self._load_rows(hidden, residual)
        for i in layers:
            self.graphs[(i, self.size)].replay()
        n = hidden.shape[0]
        return self.hidden[:n], self.residual[:n]

    def _load(self, positions: torch.Tensor, meta: AttentionMetadata) -> None:
        """Copies the step's decode metadata into the static buffers, padding with row 0."""
        self._pad(positions.shape[0], positions, meta.slot_mapping)
        bs, width = self.size, meta.block_tables.shape[1]
        self.seq_lens[:bs].copy_(meta.seq_lens[self.src])
        self.tables[:bs, :width].copy_(meta.block_tables[self.src])
        self.loaded = meta


class MixedGraphs(_LayerGraphs):
    """Layers of a mixed batch: graphs before and after attention, attention itself eager."""

    def __init__(self, model, kv_caches, expert_hits: torch.Tensor, max_tokens: int) -> None:
        super().__init__(model, kv_caches, expert_hits, capture_sizes(max_tokens, MIXED_SIZES))
        attn = model.layers[model.layer_range.start].self_attn
        shape = (self.max_rows, attn.num_heads, attn.head_dim)
        self.q = torch.zeros(shape, dtype=self.hidden.dtype, device=self.device)
        self.attn = torch.zeros(shape, dtype=self.hidden.dtype, device=self.device)
        self._capture([((i, half), lambda bs, i=i, f=f: f(i, bs))
                       for i in model.layer_range for half, f in (("before", self._before), ("after", self._after))])

    def _before(self, i: int, bs: int) -> None:
        q, r = self.model.layers[i].before_attention(self.hidden[:bs], self.residual[:bs], self.positions[:bs],
                                                     self.kv_caches[i], self.slots[:bs])
        self.q[:bs].copy_(q)
        self.residual[:bs].copy_(r)

    def _after(self, i: int, bs: int) -> None:
        h, r = self.model.layers[i].after_attention(self.attn[:bs], self.residual[:bs], self.expert_hits)
        self.hidden[:bs].copy_(h)
        self.residual[:bs].copy_(r)

    def run(self, layers: range, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """These layers for all rows of the batch; returns fresh tensors (the buffers are reused next step)."""
        n = hidden.shape[0]
        self._pad(n, positions, meta.slot_mapping)
        self._load_rows(hidden, residual)
        bs = self.size
        for i in layers:
            self.graphs[(i, "before", bs)].replay()
            out = self.model.layers[i].self_attn.attend(self.q[:n], self.kv_caches[i], meta)
            torch.index_select(out, 0, self.src, out=self.attn[:bs])  # padding rows repeat row 0
            self.graphs[(i, "after", bs)].replay()
        return self.hidden[:n].clone(), self.residual[:n].clone()

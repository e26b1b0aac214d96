"""cuDNN's scaled dot-product attention (package nvidia-cudnn-frontend, module cudnn) over our
paged cache, through its graph API.

cuDNN reads a paged cache given as a page pool [pages, Hk, page, D] and a page table [B, 1,
max_pages, 1]: our [blocks, page, Hk, D] cache is that pool with its middle axes swapped by
strides (no copy), our block tables the table. The queries and outputs are ragged: [B, Hq,
S_q, D] with per-sequence element offsets from our query prefix sums, and per-sequence query
and key lengths as padding masks. Its causal mask aligned bottom-right puts each sequence's
queries at the end of its context, as ours. No sinks or windows here (those stay on other
libraries). A graph is built per batch shape class (sequences, padded query length, table width)
and cached: the first batch of each class pays the build on the host, which is why the table
lists it for a GPU only where perf/bench_kernels.py measured it ahead.
Kept out of CUDA-graph capture.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .attention_libs import imported

if TYPE_CHECKING:
    from laminar.ops.metadata import AttentionMetadata

CACHED_GRAPHS = 64
# the ids of each graph's tensors
ID_Q, ID_K, ID_V, ID_O, ID_LEN_Q, ID_LEN_KV, ID_TABLE_K, ID_TABLE_V, ID_OFFSETS_Q, ID_OFFSETS_O = range(1, 11)


@dataclass
class _Graph:
    graph: object
    workspace: torch.Tensor


_graphs: OrderedDict[tuple, _Graph] = OrderedDict()
_handles: dict[torch.device, object] = {}


def bucket(n: int) -> int:
    """Padded query maxima: 1 for decodes, else the next power of two (at least 64), so batches of
    similar lengths share a graph."""
    return 1 if n == 1 else max(64, 1 << (n - 1).bit_length())


def cudnn_can_serve(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata, sinks: torch.Tensor | None,
                    window: int) -> bool:
    return (
        sinks is None
        and window == 0
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and k_cache.dtype == q.dtype
        and q.shape[-1] in (64, 128, 256)
        and not torch.cuda.is_current_stream_capturing()
        and imported("cudnn") is not None
    )


def cudnn_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    out: torch.Tensor, sinks: torch.Tensor | None = None, window: int = 0,
) -> torch.Tensor:
    cudnn = imported("cudnn")
    b, width = meta.block_tables.shape
    s_q = bucket(meta.max_query_len)
    entry = _graph(cudnn, q, k_cache, b, s_q, width, scale)
    offsets = (meta.query_start_loc * (q.shape[1] * q.shape[2])).view(b + 1, 1, 1, 1)
    table = meta.block_tables.view(b, 1, width, 1)
    tensors = {ID_Q: q, ID_K: _pool(k_cache), ID_V: _pool(v_cache), ID_O: out,
               ID_LEN_Q: _lengths(meta.query_start_loc.diff()), ID_LEN_KV: _lengths(meta.seq_lens),
               ID_TABLE_K: table, ID_TABLE_V: table, ID_OFFSETS_Q: offsets, ID_OFFSETS_O: offsets}
    cudnn.set_stream(_handle(cudnn, q.device), torch.cuda.current_stream(q.device).cuda_stream)
    entry.graph.execute(tensors, entry.workspace, handle=_handle(cudnn, q.device))
    return out


def _pool(cache: torch.Tensor) -> torch.Tensor:
    """Our [blocks, page, Hk, D] cache as cuDNN's page pool [blocks, Hk, page, D] (a view)."""
    return cache.transpose(1, 2)


def _lengths(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int32).view(-1, 1, 1, 1)


def _handle(cudnn, device: torch.device):
    if device not in _handles:
        with torch.cuda.device(device):
            _handles[device] = cudnn.create_handle()
    return _handles[device]


def _graph(cudnn, q: torch.Tensor, k_cache: torch.Tensor, b: int, s_q: int, width: int, scale: float) -> _Graph:
    """The built graph of this shape class, from the cache or built now."""
    page, d = k_cache.shape[1], k_cache.shape[3]
    key = (q.device, q.dtype, b, s_q, width, k_cache.shape, q.shape[1], scale)
    if key in _graphs:
        _graphs.move_to_end(key)
        return _graphs[key]
    io = cudnn.data_type.BFLOAT16 if q.dtype == torch.bfloat16 else cudnn.data_type.HALF
    g = cudnn.pygraph(handle=_handle(cudnn, q.device), io_data_type=io,
                      intermediate_data_type=cudnn.data_type.FLOAT, compute_data_type=cudnn.data_type.FLOAT)
    hq = q.shape[1]
    ragged_dims, ragged_strides = (b, hq, s_q, d), (s_q * hq * d, d, hq * d, 1)
    offsets = dict(dim=(b + 1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=cudnn.data_type.INT32)
    tq = g.tensor(dim=ragged_dims, stride=ragged_strides, data_type=io).set_uid(ID_Q)
    tq.set_ragged_offset(g.tensor(**offsets).set_uid(ID_OFFSETS_Q))
    pool = _pool(k_cache)
    tk = g.tensor(dim=tuple(pool.shape), stride=pool.stride(), data_type=io).set_uid(ID_K)
    tv = g.tensor(dim=tuple(pool.shape), stride=pool.stride(), data_type=io).set_uid(ID_V)
    ints = dict(dim=(b, 1, 1, 1), stride=(1, 1, 1, 1), data_type=cudnn.data_type.INT32)
    len_q, len_kv = g.tensor(**ints).set_uid(ID_LEN_Q), g.tensor(**ints).set_uid(ID_LEN_KV)
    tables = dict(dim=(b, 1, width, 1), stride=(width, width, 1, 1), data_type=cudnn.data_type.INT32)
    o, _ = g.sdpa(name="sdpa", q=tq, k=tk, v=tv, seq_len_q=len_q, seq_len_kv=len_kv, use_padding_mask=True,
                  attn_scale=scale, generate_stats=False, use_causal_mask_bottom_right=True,
                  paged_attention_k_table=g.tensor(**tables).set_uid(ID_TABLE_K),
                  paged_attention_v_table=g.tensor(**tables).set_uid(ID_TABLE_V),
                  paged_attention_max_seq_len_kv=width * page, compute_data_type=cudnn.data_type.FLOAT)
    o.set_uid(ID_O).set_output(True).set_dim(ragged_dims).set_stride(ragged_strides).set_data_type(io)
    o.set_ragged_offset(g.tensor(**offsets).set_uid(ID_OFFSETS_O))
    g.build([cudnn.heur_mode.A])
    workspace = torch.empty(max(g.get_workspace_size(), 1), dtype=torch.uint8, device=q.device)
    _graphs[key] = entry = _Graph(g, workspace)
    if len(_graphs) > CACHED_GRAPHS:
        _graphs.popitem(last=False)
    return entry

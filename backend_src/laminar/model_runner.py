"""One rank's share of the model: weights, KV cache, CUDA graphs, and the forward of each step.

Every rank (the engine's process and each worker) holds one ModelRunner and runs the same
StepInputs through it: its TP shard of its pipeline stage's layers, the rows passing between
stages included (laminar.pipeline). Building and loading the model is model_loader's job,
sizing the KV cache kv_sizing's; the runner warms the kernels and captures the graphs.
Deciding what a step holds, sending it to the workers and sampling happen on rank 0 only
(laminar.executor).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from laminar.config import EngineArgs, ModelConfig
from laminar.cuda_graphs import DecodeGraphs, MixedGraphs
from laminar.distributed import Distributed
from laminar.forward import EagerLayers, ForwardResult, LayerRunners, forward
from laminar.forward_batch import Carry, ForwardBatch, build_batch
from laminar.kv_sizing import allocate_kv_caches, num_kv_blocks
from laminar.model_loader import load_model
from laminar.ops import AttentionMetadata, set_fused, torch_ops
from laminar.step_inputs import StepInputs


class ModelRunner:
    def __init__(self, cfg: ModelConfig, args: EngineArgs, max_model_len: int, group: Distributed) -> None:
        self.cfg, self.args, self.group, self.tp, self.pp = cfg, args, group, group.tp, group.pp
        self.device = args.resolved_device()
        if self.device.type == "cuda":
            self.device = torch.device("cuda", group.local_rank)
        self.dtype = args.resolved_dtype(self.device)
        self.block_size = args.block_size
        self.stage_layers = layers = self.pp.layers(cfg.num_layers)
        self.model = load_model(cfg, args, self.device, self.dtype, max_model_len, self.tp, layers)
        kv_heads = self.model.layout.num_kv_heads
        self.num_blocks = num_kv_blocks(cfg, args, kv_heads, self.device, self.dtype, layers, group.control)
        self.kv_caches = allocate_kv_caches(cfg, self.num_blocks, self.block_size, kv_heads, self.device, self.dtype,
                                            layers)
        self.expert_hits = torch.zeros(
            (max(self.model.num_moe_layers, 1), max(cfg.num_experts, 1)), dtype=torch.bool, device=self.device
        )
        self.carry: Carry = {}
        self.max_model_len = max_model_len
        self.sampled: torch.Tensor | None = None  # the last sampling step's tokens, which pending ids read
        self.layers = LayerRunners(EagerLayers(self.model, self.kv_caches, self.expert_hits))
        self._capture_graphs()
        if self.device.type == "cuda":
            self._compile_eager_kernels(self.layers.mixed.max_rows if self.layers.mixed else 0, args.max_step_rows)

    def _capture_graphs(self) -> None:
        """Decode and mixed-batch CUDA graphs on CUDA (the torch reference ops read metadata on the
        host, ops=torch, so they are not capturable); none otherwise."""
        args = self.args
        if self.device.type == "cuda" and not args.enforce_eager and self.model.ops is not torch_ops:
            self.layers.decode = DecodeGraphs(self.model, self.kv_caches, self.expert_hits, args.max_num_seqs,
                                              self.max_model_len, args.block_size)
            self.layers.mixed = MixedGraphs(self.model, self.kv_caches, self.expert_hits, args.max_step_rows)

    def set_fused_ops(self, on: bool) -> None:
        """Runs the fused kernels (on, the default) or their steps as separate kernels (off) from the
        next step, graphs recaptured: perf/bench_offline.py's before/after on one set of weights.
        Call it with no request running: capturing writes the static buffers' KV slot 0, as at
        start-up (a prefix-cached block 0 would then hold junk)."""
        set_fused(self.model.ops, on)
        self.layers.decode = self.layers.mixed = None  # release the old graphs' pools before capturing anew
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._capture_graphs()

    @torch.inference_mode()
    def _compile_eager_kernels(self, graphed_rows: int, max_rows: int) -> None:
        """Runs one layer of each kind at the token counts that run outside graphs, so that Triton
        compiles their kernel variants now and not under the first such batch, where a compile
        stalls every running request for seconds. Sizes themselves are not specialised on
        (kernels.common.jit_sized); what still differs by token count is the MoE tile config, one
        per power of two (the tuned tables' rungs). Writes only to the still unused cache.
        """
        max_rows = min(max_rows, self.num_blocks * self.block_size)
        counts = sorted(n for n in {1 << k for k in range(max_rows.bit_length())} | {max_rows} if n > graphed_rows)
        kinds = {(type(self.model.layers[i].mlp), self.model.layers[i].self_attn.window): i for i in self.stage_layers}
        for n in counts:
            hidden, residual = torch.zeros(2, n, self.cfg.hidden_size, dtype=self.dtype, device=self.device)
            positions = torch.zeros(n, dtype=torch.long, device=self.device)
            tables = torch.arange(-(-n // self.block_size), dtype=torch.int32, device=self.device)
            meta = AttentionMetadata(
                query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=self.device),
                seq_lens=torch.tensor([n], dtype=torch.int32, device=self.device),
                block_tables=tables.view(1, -1),
                slot_mapping=torch.arange(n, device=self.device),
                max_query_len=n, max_seq_len=n,
            )
            for i in kinds.values():
                self.model.layers[i](hidden, residual, positions, self.kv_caches[i], meta, self.expert_hits)
        self.expert_hits.zero_()

    def build_batch(self, inputs: StepInputs) -> ForwardBatch:
        """The step's device tensors for this stage (carried segments take this rank's rows, pending
        tokens the last sampled ones)."""
        return build_batch(inputs, self.cfg.num_layers, self.block_size, self.carry, self.device, self.stage_layers,
                           self.sampled)

    @torch.inference_mode()
    def run(self, batch: ForwardBatch, carried: list[int]) -> ForwardResult:
        """The step's forward on this stage, rows to and from the neighbouring stages included;
        keeps the rows of the batches that continue here next iteration. On rank 0 the result
        holds the step's logits and its experts count, wherever the last stage is."""
        self.expert_hits.zero_()
        pp, incoming, touched = self.pp, None, None
        if not pp.first:
            incoming, touched = pp.receive_states(batch.received_sizes, self.model.norm)
        result = forward(self.model, batch, self.layers, self.cfg.num_layers, incoming)
        mine = self.expert_hits.sum().reshape(1)
        result.experts_touched = mine if touched is None else mine + touched
        if not pp.last:
            pp.send_states(result.outgoing, result.experts_touched)
        elif not pp.first:
            pp.send_result(result.logits, result.experts_touched)
        if pp.first and not pp.last and self.tp.rank == 0:
            result.logits, result.experts_touched = pp.receive_result(batch.logits_rows.numel(), self.cfg.vocab_size,
                                                                      self.device)
        in_step = {seg.batch_id for seg in batch.segments}
        self.carry = {b: result.carry[b] if b in result.carry else self.carry[b] for b in carried
                      if b in result.carry or (b in self.carry and b not in in_step)}
        return result

    def share_sampled(self, tokens: torch.Tensor | None, count: int) -> None:
        """Keeps a step's sampled tokens for the next step's pending ids: rank 0 passes its tokens
        and sends them, the other ranks of the first pipeline stage receive `count` of them (a device collective, queued behind
        the step's forward like any kernel)."""
        if tokens is None:
            tokens = torch.empty(count, dtype=torch.long, device=self.device)
        if self.tp.size > 1:  # stage 0's ranks embed the next step's tokens; rank 0 is one of them
            dist.broadcast(tokens, 0, group=self.tp.group)
        self.sampled = tokens

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

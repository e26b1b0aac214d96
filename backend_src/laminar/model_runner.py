"""One rank's share of the model: weights, KV cache, CUDA graphs, and the forward of each step.

Every rank (the engine's process and each tensor-parallel worker) holds one ModelRunner and
runs the same StepInputs through it. Deciding what a step holds, sending it to the workers
and sampling happen on rank 0 only (laminar.executor).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from laminar.config import EngineArgs, ModelConfig
from laminar.cuda_graphs import DecodeGraphs, MixedGraphs
from laminar.distributed import TensorParallel
from laminar.forward import EagerLayers, ForwardResult, LayerRunners, forward
from laminar.forward_batch import Carry, ForwardBatch, build_batch
from laminar.loader import load_dummy, load_safetensors
from laminar.models import CausalLM, model_class
from laminar.ops import AttentionMetadata, get_ops, torch_ops
from laminar.step_inputs import StepInputs

CPU_DEFAULT_KV_BYTES = 256 << 20


class ModelRunner:
    def __init__(self, cfg: ModelConfig, args: EngineArgs, max_model_len: int, tp: TensorParallel) -> None:
        self.cfg, self.args, self.tp = cfg, args, tp
        self.device = args.resolved_device()
        if self.device.type == "cuda":
            self.device = torch.device("cuda", tp.rank)
        self.dtype = args.resolved_dtype(self.device)
        self.block_size = args.block_size
        self.model = self._build_model(max_model_len)
        self.num_blocks = self._num_kv_blocks()
        shape = (self.num_blocks, self.block_size, self.model.layout.num_kv_heads, cfg.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=self.dtype, device=self.device),
             torch.zeros(shape, dtype=self.dtype, device=self.device))
            for _ in range(cfg.num_layers)
        ]
        self.expert_hits = torch.zeros(
            (max(self.model.num_moe_layers, 1), max(cfg.num_experts, 1)), dtype=torch.bool, device=self.device
        )
        self.carry: Carry = {}
        self.layers = LayerRunners(EagerLayers(self.model, self.kv_caches, self.expert_hits))
        mixed_rows = max_step_rows(args)
        # The torch reference ops read metadata on the host (LAMINAR_OPS=torch): not capturable.
        if self.device.type == "cuda" and not args.enforce_eager and self.model.ops is not torch_ops:
            self.layers.decode = DecodeGraphs(self.model, self.kv_caches, self.expert_hits, args.max_num_seqs,
                                              max_model_len, args.block_size)
            self.layers.mixed = MixedGraphs(self.model, self.kv_caches, self.expert_hits, mixed_rows)
        if self.device.type == "cuda":
            self._compile_eager_kernels(self.layers.mixed.max_rows if self.layers.mixed else 0, mixed_rows)

    def _build_model(self, max_model_len: int) -> CausalLM:
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = model_class(self.cfg)(self.cfg, get_ops(self.device), max_model_len, self.tp)
        finally:
            torch.set_default_dtype(default_dtype)
        model.requires_grad_(False)
        if self.args.load_format == "dummy":
            load_dummy(model, self.args.seed)
        else:
            load_safetensors(model, self.args.model)
        if self.args.dequantize_experts:
            model.dequantize_experts()
        elif get_ops(self.device) is not torch_ops:  # the Triton MoE reads MXFP4 experts in a layout of its own
            from laminar_kernels.mxfp4_layout import prepare_mxfp4_for_kernels

            prepare_mxfp4_for_kernels(model)
        return model

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
        kinds = {(type(layer.mlp), layer.self_attn.window): i for i, layer in enumerate(self.model.layers)}
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

    def _num_kv_blocks(self) -> int:
        """Blocks from an explicit count, a byte budget, or (CUDA) the free memory left after the weights."""
        cfg, args = self.cfg, self.args
        kv_heads = self.model.layout.num_kv_heads
        block_bytes = 2 * cfg.num_layers * self.block_size * kv_heads * cfg.head_dim * self.dtype.itemsize
        if args.num_kv_blocks is not None:
            return args.num_kv_blocks
        if args.kv_cache_bytes is not None:
            budget = args.kv_cache_bytes
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            activations = args.max_num_batched_tokens * cfg.hidden_size * 64
            budget = free - total * (1 - args.gpu_memory_utilization) - activations
        else:
            budget = CPU_DEFAULT_KV_BYTES
        blocks = torch.tensor([max(int(budget // block_bytes), 0)], dtype=torch.int64)
        if self.tp.size > 1:  # every rank must hold the same block ids
            dist.all_reduce(blocks, op=dist.ReduceOp.MIN, group=self.tp.control)
        return int(blocks.item())

    def build_batch(self, inputs: StepInputs) -> ForwardBatch:
        """The step's device tensors (carried segments take this rank's rows)."""
        return build_batch(inputs, self.cfg.num_layers, self.block_size, self.carry, self.device)

    @torch.inference_mode()
    def run(self, batch: ForwardBatch, carried: list[int]) -> ForwardResult:
        """The step's forward; keeps the rows of the batches that continue next iteration."""
        self.expert_hits.zero_()
        result = forward(self.model, batch, self.layers, self.cfg.num_layers)
        self.carry = {b: result.carry[b] if b in result.carry else self.carry[b] for b in carried}
        return result

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def max_step_rows(args: EngineArgs) -> int:
    """Rows a step can hold: the prefill token budget, plus the decodes in layered mode (chunked
    mode counts decodes inside the budget)."""
    return args.max_num_batched_tokens + (args.max_num_seqs if args.schedule_mode == "layered" else 0)

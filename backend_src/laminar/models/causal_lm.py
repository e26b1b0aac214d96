"""What every decoder here shares around its layers: vocab-parallel embedding, RoPE table, final norm, LM head.

A model subclasses CausalLM and provides make_layer and placements; laminar.forward runs the step over
`layers` (see its docstring for the protocol), and the loaders fill the parameters. A pipeline stage
builds its own layers only (`layer_range`; the others are MissingLayer, so that layer indices stay
the model's); the first stage holds the embedding, the last the LM head (and the embedding when
tied).
"""
from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from laminar.config import ModelConfig
from laminar.distributed import ShardLayout, TensorParallel
from laminar.formats import WeightFormat
from laminar.models.layers import DecoderLayer, SparseMoE
from laminar.models.placements import Placement
from laminar.models.rotary import RotaryCache


class MissingLayer(nn.Module):
    """A layer that another pipeline stage holds: keeps the layer indices, holds nothing."""

    def forward(self, *args) -> None:
        raise RuntimeError("this layer is held by another pipeline stage")


class CausalLM(nn.Module):
    """Under tensor parallelism this module is one rank's shard: embedding and LM head split the vocabulary."""

    def __init__(self, cfg: ModelConfig, ops: ModuleType, max_positions: int, tp: TensorParallel | None = None,
                 layers: range | None = None) -> None:
        super().__init__()
        self.cfg, self.ops = cfg, ops
        self.tp = tp or TensorParallel()
        self.layer_range = layers = range(cfg.num_layers) if layers is None else layers
        first, last = layers.start == 0, layers.stop == cfg.num_layers
        self.layout = layout = ShardLayout.of(cfg, self.tp)
        embed_rows = layout.vocab_per_rank if first or (last and cfg.tie_word_embeddings) else 0
        self.embed_tokens = nn.Parameter(torch.empty(embed_rows, cfg.hidden_size))  # 0 rows: not on this stage
        self.rotary = RotaryCache(cfg.head_dim, max_positions, cfg.rope_theta, cfg.yarn)
        moe_layers = [i for i in range(cfg.num_layers) if cfg.is_moe_layer(i)]
        self.moe_index = {layer: n for n, layer in enumerate(moe_layers)}
        self.layers = nn.ModuleList(self.make_layer(i) if i in layers else MissingLayer() for i in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = (
            nn.Parameter(torch.empty(layout.vocab_per_rank, cfg.hidden_size))
            if last and not cfg.tie_word_embeddings else None
        )

    def make_layer(self, index: int) -> DecoderLayer:
        """The decoder layer at this index (self.layout, self.rotary and self.moe_index are set)."""
        raise NotImplementedError

    def placements(self, name: str) -> list[Placement]:
        """Where this rank's part of the checkpoint tensor `name` goes (laminar.loader)."""
        raise NotImplementedError

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_index)

    def held_layers(self) -> list[DecoderLayer]:
        """The layers this rank holds (its pipeline stage's)."""
        return [self.layers[i] for i in self.layer_range]

    def expert_bytes(self) -> int:
        """Bytes of one whole expert as held (0 without experts): the unit of expert-traffic accounting."""
        moe = [layer.mlp for layer in self.held_layers() if isinstance(layer.mlp, SparseMoE)]
        return moe[0].expert_bytes() if moe else 0

    def dequantize_experts(self) -> None:
        """Quantized experts become dense ones in the model dtype (EngineArgs.dequantize_experts)."""
        for layer in self.held_layers():
            if isinstance(layer.mlp, SparseMoE):
                layer.mlp.dequantize_()

    def weight_formats(self) -> dict[str, WeightFormat]:
        """Parameter name -> the format its linear weight is held in (its scales: the name + "_scales")."""
        return {f"{prefix}.{name}": fmt for prefix, module in self.named_modules()
                for name, fmt in module.__dict__.get("formats", {}).items()}

    def post_load(self) -> None:
        """Each format's hook once the weights are final (loaded, dequantized if asked): a kernel's layout;
        first, an optional MoE library's copy of the experts, made from the checkpoint's layout."""
        for layer in self.held_layers():
            if isinstance(layer.mlp, SparseMoE):
                layer.mlp.prepare_library_()
        for module in self.modules():
            for name, fmt in module.__dict__.get("formats", {}).items():
                weight, scales = fmt.post_load(self.ops, getattr(module, name), getattr(module, name + "_scales"))
                setattr(module, name, weight)
                setattr(module, name + "_scales", scales)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocab-parallel lookup: each rank fills the rows of its vocabulary range, the sum joins them."""
        if self.tp.size == 1:
            return F.embedding(ids, self.embed_tokens)
        local = ids - self.layout.vocab_start
        mine = (local >= 0) & (local < self.layout.vocab_per_rank)
        hidden = F.embedding(torch.where(mine, local, 0), self.embed_tokens)
        return self.tp.all_reduce(hidden * mine.unsqueeze(-1).to(hidden.dtype))

    def logits(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """fp32 logits over the whole vocabulary from the last layer's rows."""
        final = self.ops.add_rms_norm(hidden, residual, self.norm, self.cfg.rms_norm_eps)[0]
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        return self.tp.gather_columns(F.linear(final, head))[:, : self.cfg.vocab_size].float()

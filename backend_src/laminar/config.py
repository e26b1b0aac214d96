"""Engine arguments and the model description read from a HF config.json."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from laminar.formats import Quantization
from laminar.ops import MOE_CHOICES, OPS_CHOICES
from laminar.ops.attention_choice import parse_attention

SCHEDULE_MODES = ("layered", "chunked")
PREFILL_POLICIES = {"static": ("num_stages", "group_token_thresholds"),  # policy -> its options
                    "slo": ("tbt_slo_ms", "slo_control", "slo_tail_share")}
SLO_CONTROLS = ("fixed", "tail")             # slo_control's values, the default first
PREFILL_ORDERS = ("fcfs", "short-first", "deadline", "priority")     # prefill_order's values
LOAD_FORMATS = ("safetensors", "dummy")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SUPPORTED_ARCHITECTURES = ("Qwen3MoeForCausalLM", "Qwen3ForCausalLM", "GptOssForCausalLM")
FULL_ATTENTION = 0  # a layer's window when it attends to its whole context
T = TypeVar("T")


@dataclass(frozen=True)
class Yarn:
    """YaRN RoPE scaling (arXiv 2309.00071) as transformers reads it from `rope_parameters` / `rope_scaling`."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float | None = None

    @classmethod
    def from_dict(cls, rope: dict) -> "Yarn":
        if rope.get("mscale") or rope.get("mscale_all_dim"):
            raise ValueError(f"yarn with mscale is not supported: {rope!r}")
        return cls(
            factor=float(rope["factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            beta_fast=float(rope.get("beta_fast") or 32.0),
            beta_slow=float(rope.get("beta_slow") or 1.0),
            truncate=bool(rope.get("truncate", True)),
            attention_factor=rope.get("attention_factor"),
        )


@dataclass(frozen=True)
class ModelConfig:
    """The fields of a Qwen3 / Qwen3-MoE / GPT-OSS config.json that the engine needs.

    GPT-OSS: every layer is an MoE layer whose experts have intermediate size
    `moe_intermediate_size` (its config's `intermediate_size`); `layer_windows` holds each
    layer's sliding window (FULL_ATTENTION for full layers). `quantization` is what the
    checkpoint's `quantization_config` says (every architecture; laminar.formats).
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    num_experts: int = 0
    top_k: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    eos_token_id: tuple[int, ...] = ()
    yarn: Yarn | None = None
    layer_windows: tuple[int, ...] = ()
    swiglu_alpha: float = 1.0
    swiglu_limit: float | None = None
    quantization: Quantization = Quantization()

    @classmethod
    def from_dict(cls, cfg: dict) -> "ModelConfig":
        arch = (cfg.get("architectures") or ["?"])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"model architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        # transformers 5 writes rope_parameters / num_local_experts where older configs have
        # rope_theta + rope_scaling / num_experts; accept both spellings.
        rope = cfg.get("rope_parameters") or {}
        scaling = cfg.get("rope_scaling") or ({} if rope.get("rope_type", "default") == "default" else rope)
        eos = cfg.get("eos_token_id")
        common = dict(
            architecture=arch,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=cfg["num_attention_heads"],
            num_kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=cfg.get("rope_theta") or rope.get("rope_theta", 1e6),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            eos_token_id=tuple(eos if isinstance(eos, list) else ([] if eos is None else [eos])),
            quantization=Quantization.from_config(cfg.get("quantization_config"), arch),
        )
        if arch == "GptOssForCausalLM":
            return cls(**common, **_gpt_oss_fields(cfg, scaling))
        if scaling:
            raise ValueError(f"rope scaling {scaling!r} is not supported")
        is_moe = arch == "Qwen3MoeForCausalLM"
        return cls(
            **common,
            intermediate_size=cfg.get("intermediate_size", 0),
            num_experts=(cfg.get("num_experts") or cfg.get("num_local_experts", 0)) if is_moe else 0,
            top_k=cfg.get("num_experts_per_tok", 0) if is_moe else 0,
            moe_intermediate_size=cfg.get("moe_intermediate_size", 0) if is_moe else 0,
            norm_topk_prob=cfg.get("norm_topk_prob", True),
            decoder_sparse_step=cfg.get("decoder_sparse_step", 1) or 1,
            mlp_only_layers=tuple(cfg.get("mlp_only_layers") or ()),
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ValueError(f"model: no config.json in {model_dir!s}")
        return cls.from_dict(json.loads(path.read_text()))

    def is_moe_layer(self, layer: int) -> bool:
        """Qwen3-MoE's rule for which decoder layers carry experts (GPT-OSS: all of them)."""
        return (
            self.num_experts > 0
            and layer not in self.mlp_only_layers
            and (layer + 1) % self.decoder_sparse_step == 0
        )

    def window(self, layer: int) -> int:
        """The layer's sliding window in tokens, or FULL_ATTENTION."""
        return self.layer_windows[layer] if self.layer_windows else FULL_ATTENTION


def _gpt_oss_fields(cfg: dict, scaling: dict) -> dict:
    """GPT-OSS: MoE in every layer (softmax over the top-k router logits, i.e. renormalised), clamped
    SwiGLU experts, alternating sliding / full attention, YaRN RoPE (its release's MXFP4 experts: laminar.formats)."""
    num_layers = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    if len(types) != num_layers or set(types) - {"sliding_attention", "full_attention"}:
        raise ValueError(f"layer_types must name sliding_attention or full_attention for each of {num_layers} layers")
    window = cfg.get("sliding_window") or FULL_ATTENTION
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type not in ("default", "yarn"):
        raise ValueError(f"rope scaling {scaling!r} is not supported (GPT-OSS: yarn or none)")
    return dict(
        intermediate_size=0,
        num_experts=cfg.get("num_local_experts") or cfg.get("num_experts"),
        top_k=cfg.get("num_experts_per_tok") or cfg.get("experts_per_token"),
        moe_intermediate_size=cfg["intermediate_size"],
        norm_topk_prob=True,
        yarn=Yarn.from_dict(scaling) if rope_type == "yarn" else None,
        layer_windows=tuple(window if t == "sliding_attention" else FULL_ATTENTION for t in types),
        swiglu_alpha=float(cfg.get("swiglu_alpha", 1.702)),
        swiglu_limit=float(cfg.get("swiglu_limit", 7.0)),
    )


@dataclass
class EngineArgs:
    """Everything that configures an engine; validated on construction.

    prefill_policy names the policy that decides how far prompts advance per iteration
    (laminar.policies), and each policy has its own options; setting another policy's option
    is an error. "static" is the paper's: num_stages (default 16) is the largest number of layer
    groups G a prefill batch is split into (layered mode), following group_token_thresholds
    (default [512, 1024, 2048, 4096]) by its token count (<=512: 1, <=1024: 2, <=2048: 4,
    <=4096: 8, more: num_stages), clamped to the layer count. "slo" needs tbt_slo_ms, the
    time-between-tokens target that chooses how far prompts advance (layered: how many layers;
    chunked: how many tokens) from a cost model measured on the device. slo_control "fixed" (the
    default) plans to 90% of tbt_slo_ms, open loop; "tail" steers the step time planned to on the
    measured gaps between decode steps, so their tail sits at slo_tail_share (default 0.9) of it
    (laminar.policies.slo says why fixed is the default, laminar.policies.tail_control the loop).

    prefill_order is the order in which waiting prompts are admitted, under any policy: "fcfs"
    (the default, arrival order) or "short-first" (the shortest first, so more prompts finish
    within a step and get their first token early; a prompt that has waited max_queue_wait_ms
    (default 1000) goes ahead of every younger one, so none starves), "deadline" (earliest
    time-to-first-token deadline first: arrival + the request's ttft_slo_ms, else the engine's
    ttft_slo_ms, default 2000; prompts that missed theirs wait behind those that can still make
    it, for at most one more budget) or "priority" (the request's priority, lower first, as
    vLLM's priority scheduling). laminar.policies.order says why FCFS stays the default.

    max_kv_wait_ms bounds a prompt's wait for KV blocks, under any order: running decodes keep
    their blocks ahead of waiting prompts (as in vLLM), so when long generations fill the cache a
    new prompt waits for one to end. Set, a prompt that has waited this long and does not fit
    preempts the newest decodes (recompute) until it does. Unset (the default): it waits.

    enable_prefix_caching keeps the KV blocks of computed prompts (and of full decode blocks)
    for later requests that start with the same tokens; see block_manager.

    dequantize_experts turns quantized expert weights (MXFP4, FP8) into the model dtype at load
    time; by default they stay packed and the fused MoE dequantizes them in registers (MXFP4
    experts: ~3.7x fewer bytes than bf16).

    The switches below lived in the environment before they were arguments, and scripts still set
    them there: unset, each takes LAMINAR_<NAME> from the environment, else its default. ops
    picks the torch reference or the Triton kernels (auto: kernels on CUDA); flash_attn and
    flashinfer let those libraries serve attention where installed; attention names the attention
    library of each path (auto: the GPU's measured winners; see laminar.ops.attention_choice); moe
    who runs MXFP4 experts (auto: FlashInfer's CUTLASS MoE for the token counts where it measured
    faster on this GPU, kernels/configs/moe.json, else our Triton kernel; triton; flashinfer: it
    wherever it can; FlashInfer's copy of the experts costs their memory once more); tp_timeout_s is how long a
    tensor-parallel collective waits for a silent peer; log_level is the Triton model's.

    async_scheduling plans and launches step N+1 while the device still runs step N, and reads
    step N's tokens meanwhile (laminar.engine.LLMEngine.step): the host's scheduling, input
    building, detokenizing and stop checks leave the device's critical path; outputs are the
    same. Unset, it is on where a GPU runs the steps (greedy parity confirmed there by tests/gpu on
    an H100) and off on the CPU, where the host is the device and there is nothing to overlap.
    pipeline_parallel_size splits the layers into that many contiguous stages, each with
    tensor_parallel_size ranks (laminar.pipeline). The tensor_parallel_size x pipeline_parallel_size
    ranks meet at dist_init_addr ("host:port", where rank 0 listens; unset: a free loopback port,
    every rank on this host). Rank 0, the engine, starts ranks 1 .. local_world_size - 1 on its
    own host (unset: all of them); the others run `python -m laminar.worker` on other nodes.
    """

    model: str
    dtype: str = "auto"
    device: str = "auto"
    schedule_mode: str = "layered"
    prefill_policy: str = "static"
    num_stages: int | None = None
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    max_model_len: int | None = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_kv_blocks: int | None = None
    kv_cache_bytes: int | None = None
    load_format: str = "safetensors"
    seed: int = 0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    dist_init_addr: str | None = None
    local_world_size: int | None = None
    enforce_eager: bool = False
    group_token_thresholds: tuple[int, ...] | None = None
    tbt_slo_ms: float | None = None
    slo_control: str | None = None
    slo_tail_share: float | None = None
    prefill_order: str = "fcfs"
    max_queue_wait_ms: float | None = None
    max_kv_wait_ms: float | None = None
    ttft_slo_ms: float | None = None
    enable_prefix_caching: bool = True
    dequantize_experts: bool = False
    ops: str = field(default_factory=lambda: _from_env("ops", "auto"))
    flash_attn: bool = field(default_factory=lambda: _from_env("flash_attn", True))
    flashinfer: bool = field(default_factory=lambda: _from_env("flashinfer", True))
    attention: str = field(default_factory=lambda: _from_env("attention", "auto"))
    moe: str = field(default_factory=lambda: _from_env("moe", "auto"))
    tp_timeout_s: float = field(default_factory=lambda: _from_env("tp_timeout_s", 120.0))
    async_scheduling: bool | None = field(default_factory=lambda: _from_env("async_scheduling", None, bool))
    log_level: str = field(default_factory=lambda: _from_env("log_level", "INFO"))

    def __post_init__(self) -> None:
        def positive_int(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if allow_none and value is None:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be a path to a HF model directory")
        if self.schedule_mode not in SCHEDULE_MODES:
            raise ValueError(f"schedule_mode must be one of {SCHEDULE_MODES}, got {self.schedule_mode!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {self.load_format!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size", "tensor_parallel_size",
                     "pipeline_parallel_size"):
            positive_int(name)
        for name in ("num_stages", "max_model_len", "num_kv_blocks", "kv_cache_bytes", "local_world_size"):
            positive_int(name, allow_none=True)
        self._check_ranks()
        self._check_prefill_policy()
        self._check_switches()
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.schedule_mode == "chunked" and self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                "max_num_batched_tokens must be >= max_num_seqs in chunked mode, so that every decode fits "
                f"the token budget (got {self.max_num_batched_tokens} < {self.max_num_seqs})"
            )

    @property
    def max_step_rows(self) -> int:
        """Rows a step can hold: the prefill token budget, plus the decodes in layered mode (chunked
        mode counts decodes inside the budget)."""
        return self.max_num_batched_tokens + (self.max_num_seqs if self.schedule_mode == "layered" else 0)

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def rendezvous(self) -> tuple[str, int] | None:
        """dist_init_addr as (host, port); None when unset. An IPv6 host goes in brackets: "[::1]:29500"."""
        if self.dist_init_addr is None:
            return None
        host, sep, port = self.dist_init_addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"dist_init_addr must be host:port, got {self.dist_init_addr!r}")
        return host.strip("[]"), int(port)

    def _check_ranks(self) -> None:
        self.rendezvous()
        local = self.local_world_size
        if local is not None and local > self.world_size:
            raise ValueError(f"local_world_size {local} exceeds the {self.world_size} ranks of tensor_parallel_size "
                             f"{self.tensor_parallel_size} x pipeline_parallel_size {self.pipeline_parallel_size}")
        if local is not None and local < self.world_size and self.dist_init_addr is None:
            raise ValueError("ranks on other nodes (local_world_size < tensor_parallel_size x pipeline_parallel_size) "
                             "need dist_init_addr, the host:port where they meet rank 0")

    def _check_prefill_policy(self) -> None:
        """The policy is known, its required options are set, and no other policy's option is."""
        if self.prefill_policy not in PREFILL_POLICIES:
            raise ValueError(f"prefill_policy must be one of {tuple(PREFILL_POLICIES)}, got {self.prefill_policy!r}")
        for policy, options in PREFILL_POLICIES.items():
            stray = [name for name in options if getattr(self, name) is not None]
            if policy != self.prefill_policy and stray:
                raise ValueError(f"{', '.join(stray)} applies to prefill_policy {policy!r} only, "
                                 f"not {self.prefill_policy!r}: unset it or set prefill_policy={policy!r}")
        thresholds = self.group_token_thresholds
        if thresholds is not None:
            if (not isinstance(thresholds, (tuple, list))
                    or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in thresholds)
                    or list(thresholds) != sorted(set(thresholds))):
                raise ValueError(f"group_token_thresholds must be increasing positive token counts, got {thresholds!r}")
            self.group_token_thresholds = tuple(thresholds)
        slo = self.tbt_slo_ms
        if self.prefill_policy == "slo" and slo is None:
            raise ValueError("prefill_policy 'slo' needs tbt_slo_ms (the time-between-tokens target in ms)")
        if slo is not None and not _is_number(slo, 0, 1e6):
            raise ValueError(f"tbt_slo_ms must be a positive number of milliseconds, got {slo!r}")
        if self.slo_control is not None and self.slo_control not in SLO_CONTROLS:
            raise ValueError(f"slo_control must be one of {SLO_CONTROLS}, got {self.slo_control!r}")
        share = self.slo_tail_share
        if share is not None and not (_is_number(share, 0, 1e6) and share <= 1):
            raise ValueError(f"slo_tail_share must be a share of tbt_slo_ms in (0, 1], got {share!r}")
        if share is not None and self.slo_control == "fixed":
            raise ValueError("slo_tail_share applies to slo_control 'tail' only: unset it or the 'fixed' control")
        self._check_prefill_order()
        if self.max_kv_wait_ms is not None and not _is_number(self.max_kv_wait_ms, 0, 1e9):
            raise ValueError(f"max_kv_wait_ms must be a positive number of milliseconds, got {self.max_kv_wait_ms!r}")

    def _check_prefill_order(self) -> None:
        if self.prefill_order not in PREFILL_ORDERS:
            raise ValueError(f"prefill_order must be one of {PREFILL_ORDERS}, got {self.prefill_order!r}")
        for name, order in (("max_queue_wait_ms", "short-first"), ("ttft_slo_ms", "deadline")):
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value, 0, 1e9):
                raise ValueError(f"{name} must be a positive number of milliseconds, got {value!r}")
            if self.prefill_order != order:
                raise ValueError(f"{name} applies to prefill_order {order!r} only: unset it or set "
                                 f"prefill_order={order!r}")

    def _check_switches(self) -> None:
        if self.ops not in OPS_CHOICES:
            raise ValueError(f"ops must be one of {OPS_CHOICES}, got {self.ops!r}")
        for name in ("flash_attn", "flashinfer", "async_scheduling"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "async_scheduling" and value is None):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if not isinstance(self.attention, str):
            raise ValueError(f"attention must be a string such as auto or prefill=fa4, got {self.attention!r}")
        parse_attention(self.attention)
        if self.moe not in MOE_CHOICES:
            raise ValueError(f"moe must be one of {MOE_CHOICES}, got {self.moe!r}")
        timeout = self.tp_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"tp_timeout_s must be a positive number of seconds, got {timeout!r}")
        if not isinstance(self.log_level, str) or not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ValueError(f"log_level must be a logging level (DEBUG, INFO, WARNING, ...), got {self.log_level!r}")
        self.log_level = self.log_level.upper()

    @classmethod
    def from_dict(cls, values: dict) -> "EngineArgs":
        """Builds arguments from a mapping, naming unknown keys in the error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown engine argument(s): {', '.join(unknown)}")
        return cls(**values)

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device is cuda but no CUDA device is available")
        return torch.device(self.device)

    def resolved_async_scheduling(self, device: torch.device) -> bool:
        """Unset: on for CUDA, off on the CPU (see async_scheduling)."""
        return device.type == "cuda" if self.async_scheduling is None else self.async_scheduling

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        return torch.bfloat16 if device.type == "cuda" else torch.float32


def _is_number(value: object, low: float, high: float) -> bool:
    """A real number (not a bool) in the open interval (low, high)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and low < value < high


def _from_env(name: str, default: T, kind: type | None = None) -> T:
    """A switch's value from LAMINAR_<NAME> where the environment sets it, read as `kind` (default:
    the default's type)."""
    raw = os.environ.get("LAMINAR_" + name.upper(), "").strip()
    if not raw:
        return default
    kind = kind or type(default)
    if kind is bool:
        words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
        if raw.lower() not in words:
            raise ValueError(f"LAMINAR_{name.upper()}={raw!r}: expected 1 or 0")
        return words[raw.lower()]
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"LAMINAR_{name.upper()}={raw!r}: expected a {kind.__name__}") from None

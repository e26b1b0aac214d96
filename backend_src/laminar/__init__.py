"""Laminar: an LLM engine for MoE models with layered prefill, served through Triton."""
from laminar.config import EngineArgs, ModelConfig
from laminar.engine import LLMEngine
from laminar.llm import LLM
from laminar.outputs import CompletionOutput, EngineStats, RequestOutput
from laminar.sampling_params import SamplingParams

__all__ = [
    "CompletionOutput", "EngineArgs", "EngineStats", "LLM", "LLMEngine", "ModelConfig",
    "RequestOutput", "SamplingParams",
]

"""Model architectures served by the engine."""
from laminar.models.qwen3 import ForwardBatch, ForwardResult, Qwen3ForCausalLM

__all__ = ["ForwardBatch", "ForwardResult", "Qwen3ForCausalLM"]

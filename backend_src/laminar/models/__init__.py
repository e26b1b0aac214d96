"""Model architectures served by the engine."""
from laminar.models.qwen3 import Qwen3ForCausalLM

__all__ = ["Qwen3ForCausalLM"]

"""The embedded demo model: a tiny random Qwen3-MoE checkpoint written on demand."""
from laminar.demo.checkpoint import write_demo_checkpoint

__all__ = ["write_demo_checkpoint"]

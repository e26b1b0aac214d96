"""The embedded demo model: a tiny Qwen3-MoE checkpoint written on demand, trained on its corpus."""
from laminar.demo.checkpoint import write_demo_checkpoint

__all__ = ["write_demo_checkpoint"]

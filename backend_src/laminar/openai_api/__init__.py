"""An OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions) in front of
tritonserver: a thin FastAPI app that turns each request into one streaming gRPC request to the
Laminar model per prompt, so every request still runs through Triton, its scheduling and its
metrics. Constraints (structured outputs, forced tool calls) are sent for the engine to enforce;
reasoning and tool calls are read back out of the text per model family.

Run it with `python -m laminar.openai_api` (`./build.sh serve` starts it beside tritonserver).
"""
from laminar.openai_api.app import build_app

__all__ = ["build_app"]

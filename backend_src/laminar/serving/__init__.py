"""Serving layer between Triton's Python backend and the engine, testable without Triton:
engine config from model parameters, request parsing, response assembly, the engine loop
thread and the custom metrics."""
from laminar.serving.engine_config import engine_field_types, resolve_engine_config
from laminar.serving.engine_loop import EngineLoop, RequestSink
from laminar.serving.metrics import ServingMetrics
from laminar.serving.request_parsing import ParsedRequest, RequestError, parse_request
from laminar.serving.responses import ResponseBuilder

__all__ = [
    "EngineLoop", "ParsedRequest", "RequestError", "RequestSink", "ResponseBuilder", "ServingMetrics",
    "engine_field_types", "parse_request", "resolve_engine_config",
]

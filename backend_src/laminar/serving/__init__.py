"""Serving layer between Triton's Python backend and the engine, testable without Triton:
engine config from model parameters, request parsing and limits, response assembly, the engine
loop thread and the custom metrics."""
from laminar.serving.drain_signal import on_drain_signal
from laminar.serving.engine_config import engine_field_types, resolve_engine_config
from laminar.serving.engine_loop import EngineLoop, RequestSink
from laminar.serving.errors import ErrorKind
from laminar.serving.metrics import ServingMetrics
from laminar.serving.prompt_limits import PromptLimits
from laminar.serving.request_parameters import check_no_parameters
from laminar.serving.request_parsing import KNOWN_INPUTS, ParsedRequest, RequestError, parse_request
from laminar.serving.responses import ResponseBuilder

__all__ = [
    "KNOWN_INPUTS", "EngineLoop", "ErrorKind", "ParsedRequest", "PromptLimits", "RequestError", "RequestSink",
    "ResponseBuilder", "ServingMetrics", "check_no_parameters", "engine_field_types", "on_drain_signal",
    "parse_request", "resolve_engine_config",
]

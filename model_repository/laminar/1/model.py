"""Triton Python-backend entry point for Laminar (decoupled).

Thin by design: `execute` bounds, parses and tokenizes each request on Triton's thread, then hands
it to the engine loop thread (laminar.serving.EngineLoop), which owns the engine and sends
responses through the request's response sender. Every request ends with a final response: the
result, an error naming the problem, or a cancelled error. All logic lives in laminar.serving so
it is testable without Triton.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import triton_python_backend_utils as pb_utils

from laminar import EngineArgs, LLMEngine, RequestOutput
from laminar.serving import (
    KNOWN_INPUTS,
    EngineLoop,
    ErrorKind,
    ParsedRequest,
    PromptLimits,
    RequestError,
    ResponseBuilder,
    ServingMetrics,
    check_no_parameters,
    engine_field_types,
    on_drain_signal,
    parse_request,
    resolve_engine_config,
)
from laminar_supervisor import SUPERVISED_ENV

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# pb_utils.TritonError only exists once the stub has set up the module, not at import.
ERROR_CODES = {ErrorKind.INVALID: "INVALID_ARG", ErrorKind.CANCELLED: "CANCELLED",
               ErrorKind.UNAVAILABLE: "UNAVAILABLE", ErrorKind.INTERNAL: "INTERNAL"}
logger = logging.getLogger(__name__)


class TritonSink:
    """One request's response sender, as the engine loop's RequestSink."""

    def __init__(self, sender: "pb_utils.InferenceResponseSender", builder: ResponseBuilder | None = None) -> None:
        self._sender = sender
        self._builder = builder

    def send(self, out: RequestOutput) -> None:
        arrays = self._builder.feed(out)
        if arrays is not None:
            tensors = [pb_utils.Tensor(name, value) for name, value in arrays.items()]
            self._sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=FINAL if out.finished else 0)

    def fail(self, message: str, kind: ErrorKind) -> None:
        error = pb_utils.TritonError(message, getattr(pb_utils.TritonError, ERROR_CODES[kind]))
        self._sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)

    def is_cancelled(self) -> bool:
        return self._sender.is_cancelled()


def configure_logging(level: str) -> None:
    """level: EngineArgs.log_level (validated there; LAMINAR_LOG_LEVEL overrides it as for every field)."""
    logging.basicConfig(stream=sys.stderr, level=level, format="[laminar] %(levelname)s %(message)s")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("laminar needs model_transaction_policy { decoupled: true }")
        self._model_name = args["model_name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        engine_args = EngineArgs.from_dict(
            resolve_engine_config(params, engine_field_types(EngineArgs), args["model_repository"]))
        configure_logging(engine_args.log_level)
        self._engine = LLMEngine(engine_args)
        self._limits = PromptLimits(self._engine.tokenizer, self._engine.max_model_len)
        metrics = ServingMetrics(pb_utils, {"model": args["model_name"], "version": args["model_version"]})
        self._loop = EngineLoop(self._engine, metrics, on_failure=self._on_engine_failure)
        self._loop.start()
        on_drain_signal(lambda: self._loop.end_in_flight("server is shutting down (exit timeout)"))

    def execute(self, requests: list) -> None:
        for request in requests:
            self._accept(request, time.monotonic())
        return None

    def _accept(self, request: "pb_utils.InferenceRequest", arrival: float) -> None:
        """Everything that can be refused is refused here, before the engine thread sees it."""
        sender = request.get_response_sender()
        client_id = request.request_id()
        try:
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            check_no_parameters(request.parameters(), KNOWN_INPUTS)
            self._limits.check_sizes(inputs)
            parsed = parse_request(inputs)
            prompt_ids = self._limits.token_ids(parsed.prompt)
        except RequestError as e:
            self._loop.reject(TritonSink(sender), client_id, str(e))
            return
        except Exception as e:  # a parsing bug must not take the other requests down
            logger.exception("cannot parse request %s", client_id)
            TritonSink(sender).fail(f"cannot parse the request: {type(e).__name__}: {e}", ErrorKind.INTERNAL)
            return
        self._loop.submit(prompt_ids, parsed.params, TritonSink(sender, self._builder(parsed)), arrival, client_id)

    def _builder(self, parsed: ParsedRequest) -> ResponseBuilder:
        tokenizer = self._engine.tokenizer
        return ResponseBuilder(parsed, tokenizer.decode if tokenizer else lambda ids: "")

    def _on_engine_failure(self, error: str) -> None:
        """The engine died and its requests got the error. Under the supervisor the stub exits,
        which the supervisor answers by restarting the server; otherwise the model unloads itself
        so its readiness reports it (explicit model control mode; in other modes requests keep
        failing fast with the error)."""
        if os.environ.get(SUPERVISED_ENV):
            logger.error("engine failed (%s): exiting so that the supervisor restarts the server", error)
            os._exit(1)

        def unload() -> None:
            try:
                pb_utils.unload_model(self._model_name)
            except Exception as e:
                logger.error("cannot unload %s after %s: %s", self._model_name, error, e)
        threading.Thread(target=unload, daemon=True).start()

    def finalize(self) -> None:
        self._loop.shutdown()

"""Triton Python-backend entry point for Laminar (decoupled).

Thin by design: `execute` parses each request and hands it to the engine loop thread
(laminar.serving.EngineLoop), which owns the engine and sends responses through the request's
response sender. All logic lives in laminar.serving so it is testable without Triton.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time

import triton_python_backend_utils as pb_utils

from laminar import EngineArgs, LLMEngine, RequestOutput
from laminar.serving import (
    EngineLoop, RequestError, ResponseBuilder, ServingMetrics, engine_field_types, parse_request,
    resolve_engine_config,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonSink:
    """One request's response sender, as the engine loop's RequestSink."""

    def __init__(self, sender: "pb_utils.InferenceResponseSender", builder: ResponseBuilder) -> None:
        self._sender = sender
        self._builder = builder

    def send(self, out: RequestOutput) -> None:
        arrays = self._builder.feed(out)
        if arrays is not None:
            tensors = [pb_utils.Tensor(name, value) for name, value in arrays.items()]
            self._sender.send(pb_utils.InferenceResponse(output_tensors=tensors), flags=FINAL if out.finished else 0)

    def fail(self, message: str) -> None:
        send_error(self._sender, message)

    def is_cancelled(self) -> bool:
        return self._sender.is_cancelled()


def send_error(sender: "pb_utils.InferenceResponseSender", message: str) -> None:
    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)), flags=FINAL)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="[laminar] %(levelname)s %(message)s")
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("laminar needs model_transaction_policy { decoupled: true }")
        self._model_name = args["model_name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        engine_args = EngineArgs.from_dict(
            resolve_engine_config(params, engine_field_types(EngineArgs), args["model_repository"]))
        logging.getLogger(__name__).info("engine arguments: %s", engine_args)
        self._engine = LLMEngine(engine_args)
        metrics = ServingMetrics(pb_utils, {"model": args["model_name"], "version": args["model_version"]})
        self._loop = EngineLoop(self._engine, metrics, on_failure=self._unload_self)
        self._loop.start()

    def execute(self, requests: list) -> None:
        for request in requests:
            arrival = time.monotonic()
            sender = request.get_response_sender()
            try:
                parsed = parse_request({t.name(): t.as_numpy() for t in request.inputs()})
            except RequestError as e:
                send_error(sender, str(e))
                continue
            except Exception as e:  # a parsing bug must not take the other requests down
                send_error(sender, f"cannot parse the request: {type(e).__name__}: {e}")
                continue
            self._loop.submit(parsed.prompt, parsed.params, TritonSink(sender, self._builder(parsed)), arrival)
        return None

    def _builder(self, parsed) -> ResponseBuilder:
        tokenizer = self._engine.tokenizer
        return ResponseBuilder(parsed, tokenizer.decode if tokenizer else lambda ids: "")

    def _unload_self(self, error: str) -> None:
        """The engine died: unload the model so readiness reports it (explicit model control mode,
        as `./build.sh serve` runs; in other modes requests keep failing fast with the error)."""
        def unload() -> None:
            try:
                pb_utils.unload_model(self._model_name)
            except Exception as e:
                logging.getLogger(__name__).error("cannot unload %s after %s: %s", self._model_name, error, e)
        threading.Thread(target=unload, daemon=True).start()

    def finalize(self) -> None:
        self._loop.shutdown()

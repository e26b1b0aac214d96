"""Requests to the served model over Triton's gRPC stream, with the real tritonclient.

Inputs follow the model's vLLM-backend convention: `text_input` (or `input_ids`), a
`sampling_parameters` JSON document and BOOL flags; any other input tensor passes through
unchanged, so callers can also send the TensorRT-LLM-style per-field tensors.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype


def text(value: str) -> np.ndarray:
    """A BYTES tensor holding one string."""
    return np.array([value.encode()], dtype=np.object_)


def request_tensors(prompt: str | list[int], sampling: dict[str, Any] | None = None,
                    **flags: bool) -> dict[str, np.ndarray]:
    """The prompt as `text_input` (text) or `input_ids` (token ids), the sampling parameters as
    JSON, and each flag (stream, exclude_input_in_output, return_logprobs, ...) as a BOOL."""
    tensors = {"text_input": text(prompt)} if isinstance(prompt, str) else {
        "input_ids": np.array(prompt, dtype=np.int32)}
    if sampling is not None:
        tensors["sampling_parameters"] = text(json.dumps(sampling))
    tensors.update({name: np.array([value]) for name, value in flags.items()})
    return tensors


def greedy_tensors(prompt: str | list[int], max_tokens: int, stream: bool = True) -> dict[str, np.ndarray]:
    """A greedy request of exactly `max_tokens` tokens in per-field tensors (the TensorRT-LLM
    convention, beside the JSON one), as the serving tests and the reliability scripts send it."""
    return {**request_tensors(prompt, stream=stream, ignore_eos=True),
            "max_tokens": np.array([max_tokens], dtype=np.int32), "temperature": np.array([0.0], dtype=np.float32)}


def make_inputs(tensors: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """tritonclient inputs (usable by its sync and asyncio clients alike), dtypes read off numpy."""
    inputs = []
    for name, value in tensors.items():
        tensor = grpcclient.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


@dataclass
class Result:
    """Everything one request got back, filled in by the stream's callback thread."""
    sent: float = field(default_factory=time.monotonic)
    responses: list[dict[str, np.ndarray]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each response
    error: str | None = None
    # The gRPC status of a stream-level error (e.g. "StatusCode.UNAVAILABLE": the server went
    # away); None for a model's error response, of which a stream carries only the message.
    status: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    _arrived: queue.Queue = field(default_factory=queue.Queue, repr=False)

    @property
    def ids(self) -> list[int]:
        return [int(t) for r in self.responses for t in r["output_ids"]]

    @property
    def text(self) -> str:
        return "".join(r["text_output"][0].decode() for r in self.responses)

    @property
    def finish_reason(self) -> str:
        return self.responses[-1]["finish_reason"][0].decode() if self.responses else ""

    def follow(self, timeout: float) -> Iterator[dict[str, np.ndarray]]:
        """Each response as it arrives, until the last; TimeoutError when one takes longer than
        `timeout` seconds. On an error the iteration just ends: read `error`."""
        while True:
            try:
                response = self._arrived.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no response within {timeout}s") from None
            if response is None:
                return
            yield response

    def _add(self, response: dict[str, np.ndarray]) -> None:
        self.arrivals.append(time.monotonic())
        self.responses.append(response)
        self._arrived.put(response)
        if response["finish_reason"][0]:
            self._finish()

    def _fail(self, error: str, status: str | None) -> None:
        self.error, self.status = error, status
        self._finish()

    def _finish(self) -> None:
        self._arrived.put(None)
        self.done.set()


class Stream:
    """One gRPC stream carrying many requests, told apart by request id."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: dict[str, Result] = {}
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result, error) -> None:
        if error is not None:
            # Errors carry no request id in tritonclient: callers send one request at a time then.
            pending = [r for r in self.results.values() if not r.done.is_set()]
            for r in pending[:1]:
                r._fail(str(error), error.status())
            return
        response = result.get_response()
        self.results[response.id]._add({o.name: result.as_numpy(o.name) for o in response.outputs})

    def send(self, request_id: str, tensors: dict[str, np.ndarray], model: str = "laminar") -> Result:
        self.results[request_id] = Result()
        self.client.async_stream_infer(model, make_inputs(tensors), request_id=request_id)
        return self.results[request_id]

    def close(self, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def generate(url: str, tensors: dict[str, np.ndarray], model: str = "laminar", timeout: float = 120.0) -> Result:
    """One request on its own stream, waited for."""
    stream = Stream(url)
    try:
        result = stream.send("r0", tensors, model)
        if not result.done.wait(timeout):
            raise TimeoutError(f"no final response within {timeout}s")
        return result
    finally:
        stream.close()


def wait_all(results: list[Result], timeout: float = 300.0) -> None:
    """Waits for every result at once (each gets the whole timeout)."""
    done: queue.Queue = queue.Queue()
    for r in results:
        threading.Thread(target=lambda r=r: done.put(r.done.wait(timeout)), daemon=True).start()
    if not all([done.get() for _ in results]):
        raise TimeoutError(f"some requests did not finish within {timeout}s")

"""Sending requests to the served model with the real tritonclient over one gRPC stream."""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient

_DTYPES = {np.bool_: "BOOL", np.int32: "INT32", np.uint64: "UINT64", np.float32: "FP32", np.object_: "BYTES"}


def text(value: str) -> np.ndarray:
    return np.array([value.encode()], dtype=np.object_)


def make_inputs(tensors: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, value in tensors.items():
        tensor = grpcclient.InferInput(name, list(value.shape), _DTYPES[value.dtype.type])
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


@dataclass
class Result:
    """Everything one request got back."""
    responses: list[dict[str, np.ndarray]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each response
    error: str | None = None
    # The gRPC status of a stream-level error (e.g. "StatusCode.UNAVAILABLE": the server went
    # away); None for a model's error response, of which a stream carries only the message.
    status: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def ids(self) -> list[int]:
        return [int(t) for r in self.responses for t in r["output_ids"]]

    @property
    def text(self) -> str:
        return "".join(r["text_output"][0].decode() for r in self.responses)

    @property
    def finish_reason(self) -> str:
        return self.responses[-1]["finish_reason"][0].decode() if self.responses else ""


class Stream:
    """One gRPC stream carrying many requests, told apart by request id."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.results: dict[str, Result] = {}
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result, error) -> None:
        if error is not None:
            # Errors carry no request id in tritonclient: tests send one request at a time then.
            pending = [r for r in self.results.values() if not r.done.is_set()]
            for r in pending[:1]:
                r.error, r.status = str(error), error.status()
                r.done.set()
            return
        response = result.get_response()
        r = self.results[response.id]
        r.arrivals.append(time.monotonic())
        r.responses.append({o.name: result.as_numpy(o.name) for o in response.outputs})
        if r.responses[-1]["finish_reason"][0]:
            r.done.set()

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
        assert result.done.wait(timeout), "no final response"
        return result
    finally:
        stream.close()


def wait_all(results: list[Result], timeout: float = 300.0) -> None:
    done = queue.Queue()
    for r in results:
        threading.Thread(target=lambda r=r: done.put(r.done.wait(timeout)), daemon=True).start()
    assert all(done.get() for _ in results), "some requests never finished"

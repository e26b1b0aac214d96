"""One generation as one streaming gRPC request to the Laminar model in tritonserver.

Each request opens its own bidirectional stream and keeps it open until the model's final
response, so that closing the generator early (the HTTP client went away) cancels the gRPC call:
Triton then marks the request cancelled and the engine loop aborts it, freeing its KV blocks.
A request that ends normally half-closes its stream and reads it to its end instead, so that
tritonserver sees every stream closed by the time the request is answered: Triton finalizes a
decoupled model (and so exits on SIGTERM) only once no stream is open.
"""
from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from laminar.client.grpc_stream import make_inputs, request_tensors
from laminar.openai_api.errors import APIError, Unavailable

# How long a finished request waits for tritonserver to close its stream before cancelling it.
CLOSE_TIMEOUT_S = 5.0


@dataclass
class Delta:
    """One model response: the new text and tokens since the previous one, of one sample."""

    text: str
    num_tokens: int
    num_prompt_tokens: int
    num_cached_tokens: int           # prompt tokens the prefix cache held
    finish_reason: str | None        # set on the last delta only
    logprobs: list[dict[str, dict[str, Any]]] | None  # vLLM backend's JSON, one dict per token
    index: int = 0                   # the sample (sequence_index) when n > 1
    prompt_logprobs: list[dict[str, dict[str, Any]] | None] | None = None  # first response only


def _inputs(prompt: str | list[int], sampling: dict[str, Any], logprobs: bool) -> list[InferInput]:
    return make_inputs(request_tensors(
        prompt, sampling, stream=True, exclude_input_in_output=True, return_num_input_tokens=True,
        return_num_output_tokens=True, return_num_cached_tokens=True, return_logprobs=logprobs))


def _delta(result: grpcclient.InferResult) -> Delta:
    logprobs, prompt_logprobs = result.as_numpy("logprobs"), result.as_numpy("prompt_logprobs")
    index = result.as_numpy("sequence_index")
    reason = result.as_numpy("finish_reason")[0].decode()
    return Delta(
        text=result.as_numpy("text_output")[0].decode(),
        num_tokens=int(result.as_numpy("num_output_tokens")[0]),
        num_prompt_tokens=int(result.as_numpy("num_input_tokens")[0]),
        num_cached_tokens=int(result.as_numpy("num_cached_tokens")[0]),
        finish_reason=reason or None,
        logprobs=None if logprobs is None else json.loads(logprobs[0]),
        index=0 if index is None else int(index[0]),
        prompt_logprobs=None if prompt_logprobs is None else json.loads(prompt_logprobs[0]),
    )


class TritonStream:
    """Generations against one model of one tritonserver, over its gRPC endpoint."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self._client = grpcclient.InferenceServerClient(url)
        self._ids = itertools.count()

    async def generate(self, prompt: str | list[int], sampling: dict[str, Any], logprobs: bool) -> AsyncIterator[Delta]:
        """Deltas of every sample until each has its finish reason. Raises APIError: 400 when the
        model refuses the request (its parameters or prompt), Unavailable (503) when Triton or
        the model cannot take it; the message never carries gRPC's own text."""
        finished = asyncio.Event()
        request = {"model_name": self.model, "inputs": _inputs(prompt, sampling, logprobs),
                   "request_id": f"oai-{next(self._ids)}"}

        async def requests():
            yield request
            await finished.wait()  # half-closing early would end the stream before the responses

        responses = self._client.stream_infer(requests())
        samples, done, refused = int(sampling.get("n", 1)), 0, False
        try:
            async for result, error in responses:
                if error is not None:
                    refused = True  # the model's final word on this request: the stream can close
                    if not await self.ready():
                        raise Unavailable(f"model {self.model} is not ready: {error.message()}")
                    raise APIError(400, error.message())
                delta = _delta(result)
                yield delta
                done += bool(delta.finish_reason)
                if done == samples:
                    break
        except (grpc.RpcError, InferenceServerException):
            raise Unavailable(f"model {self.model} is unreachable") from None
        finally:
            finished.set()
            await self._close(responses, refused or done == samples)

    async def _close(self, responses, complete: bool) -> None:
        """Half-close and read a finished stream to its end (Triton closes it); cancel otherwise."""
        if complete:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    async for _ in responses:
                        pass
                return
            except (TimeoutError, grpc.RpcError, InferenceServerException):
                pass
        responses.cancel()

    async def ready(self) -> bool:
        try:
            return await self._client.is_model_ready(self.model)
        except (grpc.RpcError, InferenceServerException):
            return False

    async def close(self) -> None:
        await self._client.close()

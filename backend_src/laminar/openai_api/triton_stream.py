"""One generation as one streaming gRPC request to the Laminar model in tritonserver.

Each request opens its own bidirectional stream and keeps it open until the model's final
response, so that closing the generator early (the HTTP client went away) cancels the gRPC call:
Triton then marks the request cancelled and the engine loop aborts it, freeing its KV blocks.
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
from laminar.openai_api.errors import APIError


@dataclass
class Delta:
    """One model response: the new text and tokens since the previous one."""

    text: str
    num_tokens: int
    num_prompt_tokens: int
    num_cached_tokens: int           # prompt tokens the prefix cache held
    finish_reason: str | None        # set on the last delta only
    logprobs: list[dict[str, dict[str, Any]]] | None  # vLLM backend's JSON, one dict per token


def _inputs(prompt: str | list[int], sampling: dict[str, Any], logprobs: bool) -> list[InferInput]:
    return make_inputs(request_tensors(
        prompt, sampling, stream=True, exclude_input_in_output=True, return_num_input_tokens=True,
        return_num_output_tokens=True, return_num_cached_tokens=True, return_logprobs=logprobs))


def _delta(result: grpcclient.InferResult) -> Delta:
    logprobs = result.as_numpy("logprobs")
    reason = result.as_numpy("finish_reason")[0].decode()
    return Delta(
        text=result.as_numpy("text_output")[0].decode(),
        num_tokens=int(result.as_numpy("num_output_tokens")[0]),
        num_prompt_tokens=int(result.as_numpy("num_input_tokens")[0]),
        num_cached_tokens=int(result.as_numpy("num_cached_tokens")[0]),
        finish_reason=reason or None,
        logprobs=None if logprobs is None else json.loads(logprobs[0]),
    )


class TritonStream:
    """Generations against one model of one tritonserver, over its gRPC endpoint."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self._client = grpcclient.InferenceServerClient(url)
        self._ids = itertools.count()

    async def generate(self, prompt: str | list[int], sampling: dict[str, Any], logprobs: bool) -> AsyncIterator[Delta]:
        """Deltas until the one with a finish reason. Raises APIError: 400 when the model refuses
        the request (its parameters or prompt), 503 when Triton cannot be reached."""
        finished = asyncio.Event()
        request = {"model_name": self.model, "inputs": _inputs(prompt, sampling, logprobs),
                   "request_id": f"oai-{next(self._ids)}"}

        async def requests():
            yield request
            await finished.wait()  # half-closing early would end the stream before the responses

        responses = self._client.stream_infer(requests())
        try:
            async for result, error in responses:
                if error is not None:
                    if not await self.ready():
                        raise APIError(503, f"model {self.model} is not ready: {error.message()}", type="server_error")
                    raise APIError(400, error.message())
                delta = _delta(result)
                yield delta
                if delta.finish_reason:
                    return
        except (grpc.RpcError, InferenceServerException) as e:
            raise APIError(503, f"tritonserver at {self.url} failed: {e}", type="server_error") from None
        finally:
            finished.set()
            responses.cancel()  # a no-op after the final response; cancels the request otherwise

    async def ready(self) -> bool:
        try:
            return await self._client.is_model_ready(self.model)
        except (grpc.RpcError, InferenceServerException):
            return False

    async def close(self) -> None:
        await self._client.close()

"""The FastAPI app: routes, server-sent events, and cancelling on client disconnect."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError

from laminar.openai_api.chat_template import ChatTemplate
from laminar.openai_api.errors import APIError, bad_request, on_api_error, on_validation_error
from laminar.openai_api.formats import ChatCompletions, Completions, Format, Responder
from laminar.openai_api.protocol import ChatCompletionRequest, CompletionRequest
from laminar.openai_api.triton_stream import Delta, TritonStream

T = TypeVar("T")


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Awaits `work`, cancelling it if the client disconnects first (non-streaming requests;
    Starlette already cancels a streaming response's generator on disconnect)."""
    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait([task, watcher], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()  # closes the generation, which cancels its Triton request
    if task not in done:
        raise APIError(499, "client disconnected")
    return task.result()


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def _events(responder: Responder, first: Delta, rest: AsyncGenerator[Delta, None]) -> AsyncIterator[str]:
    """SSE lines; closing `rest` on the way out cancels the Triton request if it is unfinished."""
    try:
        yield _sse(responder.chunk(first))
        if not first.finish_reason:
            async for delta in rest:
                yield _sse(responder.chunk(delta))
        if responder.include_usage:
            yield _sse(responder.usage_chunk())
        yield "data: [DONE]\n\n"
    finally:
        await rest.aclose()


async def _collect(first: Delta, rest: AsyncGenerator[Delta, None]) -> list[Delta]:
    try:
        return [first] + ([] if first.finish_reason else [d async for d in rest])
    finally:
        await rest.aclose()


def build_app(triton_url: str, model: str, served_name: str, chat_template: ChatTemplate | None) -> FastAPI:
    """model: the Triton model at triton_url (gRPC); served_name: the model id clients use."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # gRPC's asyncio channel belongs to the loop it is made in: uvicorn's, so made here.
        app.state.backend = TritonStream(triton_url, model)
        yield
        await app.state.backend.close()

    app = FastAPI(title="Laminar OpenAI-compatible API", lifespan=lifespan)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    created = int(time.time())
    card = {"id": served_name, "object": "model", "created": created, "owned_by": "laminar"}

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        ready = await request.app.state.backend.ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id}")
    async def model_card(model_id: str) -> dict:
        _check_model(model_id)
        return card

    def _check_model(name: str) -> None:
        if name != served_name:
            raise APIError(404, f"The model `{name}` does not exist.", "model", "model_not_found")

    async def _generate(request: Request, body: CompletionRequest | ChatCompletionRequest, fmt: Format,
                        prompt: str | list[int], sampling: dict[str, Any]):
        deltas = request.app.state.backend.generate(prompt, sampling, logprobs="logprobs" in sampling)
        # The first delta decides between a 400 (the model refused the request) and a 200 stream.
        first = await until_disconnect(request, anext(deltas))
        responder = Responder(fmt, served_name, body.include_usage)
        if body.stream:
            return StreamingResponse(_events(responder, first, deltas), media_type="text/event-stream")
        return JSONResponse(responder.response(await until_disconnect(request, _collect(first, deltas))))

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest):
        _check_model(body.model)
        sampling = body.sampling()
        return await _generate(request, body, Completions(body.logprobs), body.prompt_input(), sampling)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        _check_model(body.model)
        if chat_template is None or not chat_template.available:
            raise bad_request("this model has no chat template; use /v1/completions")
        sampling = body.sampling()
        try:
            prompt = chat_template.render(body.template_messages())
        except TemplateError as e:  # e.g. a role the template does not allow
            raise bad_request(f"the chat template refused the messages: {e}", "messages") from None
        fmt = ChatCompletions(body.top_logprobs if body.logprobs else None)
        return await _generate(request, body, fmt, prompt, sampling)

    return app

"""The FastAPI app: routes, server-sent events, and cancelling on client disconnect."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError

from laminar.openai_api.chat_template import ChatTemplate
from laminar.openai_api.errors import APIError, Unavailable, bad_request, on_api_error, on_validation_error
from laminar.openai_api.families import Family, PlainFamily
from laminar.openai_api.formats import ChatCompletions, Completions, Format, Responder
from laminar.openai_api.protocol import ChatCompletionRequest, CompletionRequest
from laminar.openai_api.readiness import Readiness
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


Stream = tuple[Delta, AsyncGenerator[Delta, None]]  # a generation's first delta and the rest


async def _merged(streams: list[Stream]) -> AsyncIterator[tuple[int, Delta]]:
    """(prompt index, delta) of several generations as they come; closing it closes them all
    (which cancels the unfinished Triton requests)."""
    for i, (first, _) in enumerate(streams):
        yield i, first
    if len(streams) == 1:
        async for delta in streams[0][1]:
            yield 0, delta
        return
    pending = {asyncio.ensure_future(anext(rest)): i for i, (_, rest) in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                i = pending.pop(task)
                if isinstance(task.exception(), StopAsyncIteration):
                    continue  # this prompt's samples are all finished
                delta = task.result()  # raises the generation's error, if it failed
                pending[asyncio.ensure_future(anext(streams[i][1]))] = i
                yield i, delta
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _close(streams: list[Stream]) -> None:
    for _, rest in streams:
        await rest.aclose()


async def _events(responder: Responder, streams: list[Stream]) -> AsyncIterator[str]:
    """SSE lines. An error after the stream started (tritonserver stopping or gone) ends it
    with an error event and [DONE], never a cut stream."""
    deltas = _merged(streams)
    try:
        async for prompt, delta in deltas:
            chunk = responder.chunk(prompt, delta)
            if chunk is not None:
                yield _sse(chunk)
        if responder.include_usage:
            yield _sse(responder.usage_chunk())
    except APIError as e:
        yield _sse(e.body())
    finally:
        await deltas.aclose()
        await _close(streams)
    yield "data: [DONE]\n\n"


async def _collect(streams: list[Stream]) -> list[tuple[int, Delta]]:
    deltas = _merged(streams)
    try:
        return [d async for d in deltas]
    finally:
        await deltas.aclose()
        await _close(streams)


def build_app(triton_url: str, model: str, served_name: str, chat_template: ChatTemplate | None,
              family: Family | None = None, restart_wait_s: float = 60.0) -> FastAPI:
    """model: the Triton model at triton_url (gRPC); served_name: the model id clients use;
    family: how the model writes reasoning and tool calls (default: read off the checkpoint)."""
    family = family or PlainFamily()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # gRPC's asyncio channel belongs to the loop it is made in: uvicorn's, so made here.
        app.state.backend = TritonStream(triton_url, model)
        app.state.readiness = Readiness(app.state.backend.ready, restart_wait_s)
        yield
        await app.state.backend.close()

    async def require_ready(request: Request) -> None:
        await request.app.state.readiness.require()

    app = FastAPI(title="Laminar OpenAI-compatible API", lifespan=lifespan)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_ready)])
    created = int(time.time())
    card = {"id": served_name, "object": "model", "created": created, "owned_by": "laminar"}

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        ready = await request.app.state.readiness.check()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @v1.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [card]}

    @v1.get("/models/{model_id}")
    async def model_card(model_id: str) -> dict:
        _check_model(model_id)
        return card

    def _check_model(name: str) -> None:
        if name != served_name:
            raise APIError(404, f"The model `{name}` does not exist.", "model", "model_not_found")

    async def _first(request: Request, prompt: str | list[int], sampling: dict[str, Any]) -> Stream:
        """A generation and its first delta, which decides between an error (e.g. a 400: the
        model refused the request) and a 200."""
        deltas = request.app.state.backend.generate(prompt, sampling, logprobs="logprobs" in sampling)
        try:
            return await until_disconnect(request, anext(deltas)), deltas
        except BaseException:
            await deltas.aclose()
            raise

    async def _start(request: Request, prompt: str | list[int], sampling: dict[str, Any]) -> Stream:
        """A request that finds tritonserver gone (a restart) waits for the model to be back and
        is sent once more: nothing of it reached the client yet."""
        try:
            return await _first(request, prompt, sampling)
        except Unavailable:
            await request.app.state.readiness.wait_back()
        return await _first(request, prompt, sampling)

    async def _generate(request: Request, body: CompletionRequest | ChatCompletionRequest, fmt: Format,
                        prompts: list[str | list[int]], sampling: dict[str, Any]):
        started = await asyncio.gather(*(_start(request, p, sampling) for p in prompts), return_exceptions=True)
        streams: list[Stream] = [s for s in started if not isinstance(s, BaseException)]
        failed = [s for s in started if isinstance(s, BaseException)]
        if failed:  # one prompt refused: the request is, and the others are cancelled
            await _close(streams)
            raise failed[0]
        responder = Responder(fmt, served_name, body.include_usage, len(prompts), body.n)
        if body.stream:
            return StreamingResponse(_events(responder, streams), media_type="text/event-stream")
        return JSONResponse(responder.response(await until_disconnect(request, _collect(streams))))

    @v1.post("/completions")
    async def completions(request: Request, body: CompletionRequest):
        _check_model(body.model)
        sampling = body.sampling()
        prompts = body.prompt_inputs()
        echo = [_prompt_text(p) for p in prompts] if body.echo else None
        return await _generate(request, body, Completions(body.logprobs, echo), prompts, sampling)

    def _prompt_text(prompt: str | list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        if chat_template is None:
            raise bad_request("echo of token-id prompts needs the checkpoint's tokenizer", "echo")
        return chat_template.decode(prompt)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest):
        _check_model(body.model)
        if chat_template is None or not chat_template.available:
            raise bad_request("this model has no chat template; use /v1/completions")
        sampling = body.sampling(family)
        try:
            prompt = chat_template.render(body.template_messages(), body.template_tools(), body.template_kwargs())
        except TemplateError as e:  # e.g. a role the template does not allow
            raise bad_request(f"the chat template refused the messages: {e}", "messages") from None
        tools = bool(body.functions())
        fmt = ChatCompletions(body.top_logprobs if body.logprobs else None, lambda: family.parser(prompt, tools))
        return await _generate(request, body, fmt, [prompt], sampling)

    app.include_router(v1)
    return app

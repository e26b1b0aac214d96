"""The one thread that owns the (not thread-safe) engine.

Triton's `execute` only enqueues requests here and returns at once; this thread admits them
between steps, runs `engine.step()` while work exists, hands each output to the request's sink,
aborts requests whose client cancelled or went away (freeing their KV blocks at the next step, and
ending them with a final cancelled response: Triton holds a request's resources until its final
flag, even when nobody listens), and sleeps on a condition variable when idle. If the engine
raises, every in-flight and queued request fails with the error and the loop reports itself
unhealthy instead of hanging.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from laminar import LLMEngine, RequestOutput, SamplingParams
    from laminar.serving.metrics import ServingMetrics

from laminar.serving.errors import ErrorKind

logger = logging.getLogger(__name__)


class RequestSink(Protocol):
    """Where one request's results go (model.py adapts Triton's response sender)."""

    def send(self, out: RequestOutput) -> None:
        """Delivers one engine delta; raising means the client is gone and the request is aborted."""

    def fail(self, message: str, kind: ErrorKind) -> None:
        """Ends the request with an error response (the final one, also when cancelled)."""

    def is_cancelled(self) -> bool:
        """True once the client cancelled or disconnected."""


@dataclass
class _Pending:
    request_id: str
    prompt: str | list[int]
    params: SamplingParams
    sink: RequestSink
    arrival: float
    client_id: str


@dataclass
class _Active:
    sink: RequestSink
    arrival: float
    client_id: str
    last_token: float | None = None


class EngineLoop:
    def __init__(
        self,
        engine: LLMEngine,
        metrics: ServingMetrics | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """On unload or server shutdown, Triton finalizes a decoupled model once its in-flight
        requests are complete: they drain (bounded by tritonserver's --exit-timeout-secs). The
        loop asks Triton nothing from its own thread but responses and metrics: polling the
        server's state from here raced the stub's teardown and crashed it."""
        self._engine = engine
        self._metrics = metrics
        self._on_failure = on_failure
        self._cv = threading.Condition()
        self._pending: list[_Pending] = []
        self._active: dict[str, _Active] = {}
        self._stopping = False
        self._ending: str | None = None
        self._error: str | None = None
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="laminar-engine-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def error(self) -> str | None:
        return self._error

    def submit(self, prompt: str | list[int], params: SamplingParams, sink: RequestSink,
               arrival: float | None = None, client_id: str = "") -> str | None:
        """Queues a request (thread-safe, never blocks on the engine); returns its engine id, or
        None when it was failed at once because the loop is dead or stopping. `client_id` (the
        client's request id) is what the logs name the request by."""
        with self._cv:
            error, stopping = self._error, self._stopping
            if error is None and not stopping:
                request_id = f"lp-{next(self._ids)}"
                arrival = time.monotonic() if arrival is None else arrival
                self._pending.append(_Pending(request_id, prompt, params, sink, arrival, client_id))
                self._cv.notify()
                return request_id
        if error is not None:
            sink.fail(error, ErrorKind.INTERNAL)
        else:
            sink.fail("server is shutting down", ErrorKind.UNAVAILABLE)
        return None

    def reject(self, sink: RequestSink, client_id: str, message: str) -> None:
        """Ends a request the client got wrong: counted, logged with the client's id, answered."""
        logger.warning("rejected request %s: %s", client_id or "(no id)", message)
        if self._metrics is not None:
            self._metrics.request_rejected()
        sink.fail(message, ErrorKind.INVALID)

    def end_in_flight(self, message: str) -> None:
        """Ends every queued and running request with `message` (UNAVAILABLE) at the next step and
        frees their KV blocks; the loop goes on serving. Thread-safe: the shutdown signal calls it
        so that tritonserver is not left waiting on requests past its exit timeout."""
        with self._cv:
            self._ending = message
            self._cv.notify()

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stops the loop, failing what is still in flight, and shuts the engine down."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while self._iterate():
                pass
            self._fail_everything("server is shutting down", ErrorKind.UNAVAILABLE)
        except Exception as e:  # the engine is broken: fail loudly, never hang clients
            logger.exception("engine loop failed")
            self._error = f"engine failed: {type(e).__name__}: {e}"
            self._fail_everything(self._error, ErrorKind.INTERNAL)
            if self._on_failure is not None:
                self._on_failure(self._error)
        finally:
            self._engine.shutdown()

    def _iterate(self) -> bool:
        """One admit/cancel/step/dispatch round; False once asked to stop."""
        with self._cv:
            while not (self._pending or self._stopping or self._ending or self._engine.has_unfinished_requests()):
                self._cv.wait()
            if self._stopping:
                return False
            ending, self._ending = self._ending, None
            batch, self._pending = ([], self._pending) if ending else (self._pending, [])
        if ending:
            self._fail_everything(ending, ErrorKind.UNAVAILABLE)
            return True
        self._admit(batch)
        self._reap_cancelled()
        outputs = self._engine.step() if self._engine.has_unfinished_requests() else []
        # Metrics first: a client that just got its last token must already see them.
        if self._metrics is not None:
            self._metrics.engine_stats(self._engine.get_stats())
        self._dispatch(outputs)
        return True

    def _admit(self, batch: list[_Pending]) -> None:
        for p in batch:
            try:
                self._engine.add_request(p.request_id, p.prompt, p.params, arrival_time=p.arrival)
            except ValueError as e:  # bad prompt (too long, bad ids...): this request only
                self.reject(p.sink, p.client_id, str(e))
                continue
            self._active[p.request_id] = _Active(p.sink, p.arrival, p.client_id)

    def _reap_cancelled(self) -> None:
        for request_id, active in list(self._active.items()):
            try:
                cancelled = active.sink.is_cancelled()
            except Exception:  # the sender is unusable: nobody is listening
                cancelled = True
            if cancelled:
                self._abort(request_id, "cancelled by the client")

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        for out in outputs:
            active = self._active.get(out.request_id)
            if active is None:
                continue
            if out.error is not None:  # it never ran (an invalid grammar): the client's mistake
                del self._active[out.request_id]
                self.reject(active.sink, active.client_id, out.error)
                continue
            self._observe_tokens(active, out, now)
            if out.finished:
                del self._active[out.request_id]
                if self._metrics is not None:
                    self._metrics.request_finished(now - active.arrival, out.finish_reason or "")
            try:
                active.sink.send(out)
            except Exception as e:  # the client is gone: _abort still owes Triton a final flag
                self._active[out.request_id] = active
                self._abort(out.request_id, f"response could not be sent ({e})")

    def _observe_tokens(self, active: _Active, out: RequestOutput, now: float) -> None:
        """Latencies as the client sees them: from arrival in `execute` to dispatch."""
        count = len(out.new_token_ids)
        if count == 0:
            return
        if self._metrics is not None:
            if active.last_token is None:
                scheduled = out.scheduled_time if out.scheduled_time is not None else now
                self._metrics.first_token(now - active.arrival, scheduled - active.arrival)
            else:
                self._metrics.inter_token(now - active.last_token, count)
        active.last_token = now

    def _abort(self, request_id: str, why: str) -> None:
        """Frees the request's KV blocks and still ends it toward the client with a final
        cancelled response; a sender that cannot take it any more has nobody to tell."""
        self._engine.abort(request_id)
        active = self._active.pop(request_id)
        logger.info("aborted request %s (%s): %s", active.client_id or "(no id)", request_id, why)
        if self._metrics is not None:
            self._metrics.request_aborted()
        try:
            active.sink.fail(f"request cancelled: {why}", ErrorKind.CANCELLED)
        except Exception as e:
            logger.debug("final response of %s not delivered: %s", request_id, e)

    def _fail_everything(self, message: str, kind: ErrorKind) -> None:
        """Answers every queued and running request first, then frees the running ones' blocks
        (after an engine failure the engine may raise again)."""
        with self._cv:
            pending, self._pending = self._pending, []
        active, self._active = self._active, {}
        if pending or active:
            logger.warning("ending %d requests: %s", len(pending) + len(active), message)
        for sink in [p.sink for p in pending] + [a.sink for a in active.values()]:
            try:
                sink.fail(message, kind)
            except Exception:
                logger.exception("could not deliver the failure to a request")
        for request_id in active:
            self._engine.abort(request_id)

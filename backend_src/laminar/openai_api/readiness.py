"""Whether the model can take requests, as the OpenAI layer answers it.

Before the model was ever ready (tritonserver starting, the model loading) every endpoint
answers 503 at once. Once it was ready, a not-ready model means a restart (the supervisor
brings tritonserver back after a crash): requests wait for it, up to a bound, so a restart
costs latency rather than errors.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from laminar.openai_api.errors import Unavailable

# A ready answer younger than this is trusted without asking tritonserver again.
FRESH_S = 1.0
POLL_S = 0.25


class Readiness:
    def __init__(self, probe: Callable[[], Awaitable[bool]], restart_wait_s: float) -> None:
        """probe: asks tritonserver whether the model is ready; restart_wait_s: how long a
        request waits for a model that was ready before to come back."""
        self._probe, self.restart_wait_s = probe, restart_wait_s
        self._ready_at: float | None = None  # monotonic time of the last ready answer

    @property
    def was_ready(self) -> bool:
        return self._ready_at is not None

    async def check(self) -> bool:
        ready = await self._probe()
        if ready:
            self._ready_at = time.monotonic()
        return ready

    async def require(self) -> None:
        """Returns once the model is ready; raises Unavailable if it is not (and, after it
        was ready once, if it does not come back within restart_wait_s)."""
        if self._ready_at is not None and time.monotonic() - self._ready_at < FRESH_S:
            return
        if await self.check():
            return
        if not self.was_ready:
            raise Unavailable("the model is not ready yet")
        await self.wait_back()

    async def wait_back(self) -> None:
        """Waits for a restarted model; Unavailable after restart_wait_s."""
        self._ready_at = min(self._ready_at or 0.0, time.monotonic() - FRESH_S)  # distrust the cached answer
        deadline = time.monotonic() + self.restart_wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            if await self.check():
                return
        raise Unavailable(f"the model did not come back within {self.restart_wait_s:g}s")

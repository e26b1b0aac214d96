"""SIGUSR1 to a backend stub: end every in-flight request now.

On SIGTERM tritonserver drains in-flight requests, but only until its --exit-timeout-secs; past
that it exits with the model still loaded, aborts (2.51: "malloc(): unaligned tcache chunk",
SIGABRT) and orphans the stub with its shared memory. The model cannot see the server stopping,
so the supervisor tells it: shortly before the exit timeout it sends SIGUSR1 to the stubs, the
requests still running end with an UNAVAILABLE error, the model is finalized and tritonserver
exits cleanly.

The stub's main thread waits in C++ between calls, where a Python signal handler would not run
until the next request arrives; the signal is read from Python's wakeup fd on a thread instead.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from laminar_supervisor import DRAIN_SIGNAL

logger = logging.getLogger(__name__)


def on_drain_signal(callback: Callable[[], None]) -> None:
    """Runs `callback` on a thread of its own each time DRAIN_SIGNAL arrives. Python allows
    signal handlers to be set only from the main thread: elsewhere this logs and does nothing."""
    if threading.current_thread() is not threading.main_thread():
        logger.warning("not on the main thread: %s will not end in-flight requests", DRAIN_SIGNAL.name)
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.signal(DRAIN_SIGNAL, lambda *_: None)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            if int(DRAIN_SIGNAL) in os.read(read_fd, 64):
                callback()
    threading.Thread(target=watch, name="laminar-drain-signal", daemon=True).start()

"""Stopping tritonserver behind the OpenAI API: after OpenAI traffic it exits as promptly as after
gRPC traffic (the API keeps no stream open once its requests end), and a stream in flight at
SIGTERM ends with an SSE error event and [DONE], never cut. The timing over many tries under CPU
load is perf/openai_shutdown.py's."""
from __future__ import annotations

import json
import signal
import time
import urllib.request

from openai_shutdown import openai_traffic, sigterm_exit, start_stack


def test_sigterm_after_openai_traffic_does_not_wait_for_the_exit_timeout(demo_model, tmp_path):
    stack = start_stack(demo_model, tmp_path)
    try:
        openai_traffic(stack.url)
        took, rc, gave_up = sigterm_exit(stack.server)
    finally:
        stack.stop()
    assert rc == 0 and not gave_up and took < 15, (rc, took, stack.server.log()[-2000:])


def test_sigterm_mid_stream_ends_it_with_an_error_event_then_done(demo_model, tmp_path):
    stack = start_stack(demo_model, tmp_path)
    try:
        body = {"model": "laminar", "prompt": "The quick brown fox", "max_tokens": 4000, "ignore_eos": True,
                "stream": True}
        request = urllib.request.Request(f"{stack.url}/v1/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=90) as r:
            events = [r.readline(), r.readline()]
            stack.server.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            events += r.read().split(b"\n")  # to the end of the response: the stream is not cut
        took = time.monotonic() - started
        stack.server.proc.wait(60)
    finally:
        stack.stop()
    data = [json.loads(e[6:]) if e != b"data: [DONE]" else "[DONE]" for e in events if e.startswith(b"data: ")]
    assert data[-1] == "[DONE]"
    error = data[-2]["error"]
    assert error["type"] == "server_error" and "grpc" not in error["message"].lower(), error
    assert took < 40, took

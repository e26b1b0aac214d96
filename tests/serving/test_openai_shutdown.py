"""Stopping and restarting tritonserver behind the OpenAI API: after OpenAI traffic it exits as
promptly as after gRPC traffic (the API keeps no stream open once its requests end); a stream in
flight at SIGTERM or at a crash ends with an SSE error event and [DONE], never cut; a request that
meets a crashed server waits for the supervisor's restart and is answered. The timing over many
tries under CPU load is perf/openai_shutdown.py's."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request

import openai

from laminar.client.openai_stack import openai_traffic, sigterm_exit, start_stack
from laminar.client.triton_server import wait_for


def test_sigterm_after_openai_traffic_does_not_wait_for_the_exit_timeout(demo_model, tmp_path):
    stack = start_stack(demo_model, tmp_path)
    try:
        openai_traffic(stack.url)
        took, rc, gave_up = sigterm_exit(stack.server)
    finally:
        stack.stop()
    assert rc == 0 and not gave_up and took < 15, (rc, took, stack.server.log()[-2000:])


def long_stream_events(url: str, interrupt) -> list:
    """The events of a long streaming completion, read to the end after interrupt() ran mid-stream."""
    body = {"model": "laminar", "prompt": "The quick brown fox", "max_tokens": 4000, "ignore_eos": True,
            "stream": True}
    request = urllib.request.Request(f"{url}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=90) as r:
        events = [r.readline(), r.readline()]
        interrupt()
        events += r.read().split(b"\n")  # to the end of the response: the stream is not cut
    return [json.loads(e[6:]) if e != b"data: [DONE]" else "[DONE]" for e in events if e.startswith(b"data: ")]


def assert_error_then_done(events: list) -> None:
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["type"] == "server_error" and "grpc" not in error["message"].lower(), error


def test_a_crash_costs_latency_not_errors_and_sigterm_ends_streams_cleanly(demo_model, tmp_path):
    """kill -9 of tritonserver (standing in for its crashes under cancel-heavy load): the stream in
    flight ends with an error event; a request sent meanwhile waits for the restart and succeeds.
    Then SIGTERM mid-stream: that stream too ends with an error event and [DONE]."""
    stack = start_stack(demo_model, tmp_path)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=300)
    answers = []

    def crash() -> None:
        (stub,) = stack.server.stubs().values()
        (tritonserver,) = stack.server.descendants() - {stub.pid}
        os.kill(tritonserver, signal.SIGKILL)
        request = threading.Thread(target=lambda: answers.append(client.completions.create(
            model="laminar", prompt="The quick brown fox", max_tokens=3)))
        request.start()

    try:
        time.sleep(2)  # the supervisor restarts a server it saw serving (it polls every 0.5 s)
        events = long_stream_events(stack.url, crash)
        assert wait_for(lambda: answers, timeout=240), "the request sent during the restart was answered"
        assert_error_then_done(events)
        events = long_stream_events(stack.url, lambda: stack.server.proc.send_signal(signal.SIGTERM))
        stack.server.proc.wait(60)
    finally:
        stack.stop()
    assert_error_then_done(events)
    assert answers[0].choices[0].finish_reason == "length" and answers[0].usage.completion_tokens == 3

"""Every request ends, and ends cleanly, through the real tritonserver: cancelled ones with a final
response (so tritonserver frees what it holds for them), malformed ones with an error naming the
field (HTTP 400; over a gRPC stream Triton carries only the message, see test_serving_server),
counted and logged with the client's request id."""
from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from test_serving_server import metric

from laminar.client.grpc_stream import Stream, generate, greedy_tensors, text
from laminar.client.triton_server import wait_for

CANCELS = 100


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cancel_mid_stream(url: str) -> None:
    stream = Stream(url)
    result = stream.send("to-cancel", greedy_tensors("The quick brown fox", 2000))
    assert wait_for(lambda: len(result.responses) >= 1)
    stream.close(cancel=True)


def test_cancelled_requests_leave_no_fd_behind_in_tritonserver(server):
    """Before the final cancelled response, each cancel leaked ~0.85 fd in tritonserver."""
    aborted = metric(server.metrics(), "lp:request_aborted_total")
    for _ in range(10):  # warm-up: gRPC and allocator pools reach their steady size
        cancel_mid_stream(server.grpc_url)
    assert wait_for(lambda: metric(server.metrics(), "lp:request_aborted_total") == aborted + 10)
    fds = open_fds(server.proc.pid)
    for _ in range(CANCELS):
        cancel_mid_stream(server.grpc_url)
    assert wait_for(lambda: metric(server.metrics(), "lp:request_aborted_total") == aborted + 10 + CANCELS)
    assert wait_for(lambda: open_fds(server.proc.pid) <= fds, timeout=10), (fds, open_fds(server.proc.pid))
    assert wait_for(lambda: metric(server.metrics(), "lp:kv_cache_usage_perc") == 0.0)


def test_http_stream_disconnect_aborts_the_request(server):
    aborted = metric(server.metrics(), "lp:request_aborted_total")
    body = json.dumps({"text_input": "The quick brown fox", "max_tokens": 2000, "ignore_eos": True,
                       "stream": True}).encode()
    with socket.create_connection(("localhost", server.http_port)) as conn:
        conn.sendall(b"POST /v2/models/laminar/generate_stream HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    assert wait_for(lambda: metric(server.metrics(), "lp:request_aborted_total") == aborted + 1)
    assert wait_for(lambda: metric(server.metrics(), "lp:num_requests_running") == 0)


def http_generate(server, body: dict | str) -> tuple[int, dict]:
    data = body if isinstance(body, str) else json.dumps(body)
    req = urllib.request.Request(f"{server.http_url}/v2/models/laminar/generate", data=data.encode())
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


HTTP_BAD = {
    "misspelled key": ({"text_input": "hi", "max_token": 3}, "'max_token' (did you mean 'max_tokens'?)"),
    "misspelled key 2": ({"text_input": "hi", "temprature": 0}, "'temprature' (did you mean 'temperature'?)"),
    "end_id -1": ({"text_input": "hi", "end_id": -1}, "'end_id' must be a token id >= 0"),
    "tiny top_p tensor": ({"text_input": "hi", "top_p": 1e-50}, "top_p"),
    "seed 1e30": ({"text_input": "hi", "sampling_parameters": '{"seed": 1e30}'}, "seed must be an int"),
    "huge seed": ({"text_input": "hi", "sampling_parameters": json.dumps({"seed": 10**30})}, "'seed' must be in"),
    "deep JSON": ({"text_input": "hi", "sampling_parameters": '{"stop": ' + "[" * 50000 + "]" * 50000 + "}"},
                  "'sampling_parameters' is nested too deeply"),
    "both prompts": ({"text_input": "hi", "input_ids": [1, 2]}, "'text_input' and 'input_ids'"),
}


@pytest.mark.parametrize("case", HTTP_BAD)
def test_malformed_http_generate_gets_400_naming_the_field(server, case):
    body, needle = HTTP_BAD[case]
    status, reply = http_generate(server, body)
    assert status == 400 and needle in reply["error"], (status, reply)


def test_tiny_top_p_in_json_samples_the_top_token(server):
    greedy = generate(server.grpc_url, greedy_tensors("The quick brown fox", 6))
    tensors = {**greedy_tensors("The quick brown fox", 6), "temperature": np.array([1.0], dtype=np.float32),
               "sampling_parameters": text('{"top_p": 1e-50}')}
    assert generate(server.grpc_url, tensors).ids == greedy.ids


def test_rejections_are_counted_and_logged_with_the_client_request_id(server):
    before = metric(server.metrics(), "lp:request_rejected_total")
    stream = Stream(server.grpc_url)
    try:
        result = stream.send("client-req-42", {"text_input": text("hi"), "end_id": np.array([-1], dtype=np.int32)})
        assert result.done.wait(30) and "end_id" in result.error
    finally:
        stream.close()
    assert wait_for(lambda: metric(server.metrics(), "lp:request_rejected_total") == before + 1)
    assert "rejected request client-req-42: input 'end_id'" in server.log()


def test_huge_prompt_is_refused_by_size_naming_the_input(server):
    """Refused before tokenizing: the stall it caused is measured in perf/reliability.py."""
    started = time.monotonic()
    result = generate(server.grpc_url, {"text_input": text("word " * 1_000_000)})
    assert "input 'text_input' is 5000000 bytes" in result.error
    assert time.monotonic() - started < 30

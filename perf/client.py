"""Stream one prompt from a Laminar Triton server over gRPC, printing tokens as they arrive,
then time to first token and token rate.

    python perf/client.py "Once upon a time" --max-tokens 64 --temperature 0
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import uuid

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def build_inputs(prompt: str, sampling: dict) -> list[grpcclient.InferInput]:
    """vLLM-convention inputs: text_input, stream, sampling_parameters (JSON)."""
    tensors = {
        "text_input": np.array([prompt.encode()], dtype=np.object_),
        "stream": np.array([True]),
        "sampling_parameters": np.array([json.dumps(sampling).encode()], dtype=np.object_),
    }
    inputs = []
    for name, value in tensors.items():
        dtype = "BOOL" if value.dtype == np.bool_ else "BYTES"
        tensor = grpcclient.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def stream(url: str, model: str, prompt: str, sampling: dict, timeout: float) -> int:
    """Prints the completion as it streams; returns a process exit code."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error, time.perf_counter())))
    start = time.perf_counter()
    client.async_stream_infer(model, build_inputs(prompt, sampling), request_id=uuid.uuid4().hex)
    first = last = None
    tokens = 0
    reason = ""
    try:
        while not reason:
            result, error, arrived = results.get(timeout=timeout)
            if error is not None:
                print(f"\nerror: {error}", file=sys.stderr)
                return 1
            first = first or arrived
            last = arrived
            tokens += len(result.as_numpy("output_ids"))
            print(result.as_numpy("text_output")[0].decode(), end="", flush=True)
            reason = result.as_numpy("finish_reason")[0].decode()
    except queue.Empty:
        print(f"\nerror: no response within {timeout}s", file=sys.stderr)
        return 1
    finally:
        client.stop_stream()
        client.close()
    ttft = first - start
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    print(f"\n\n[{reason}] {tokens} tokens, TTFT {ttft * 1000:.1f} ms, {rate:.1f} tokens/s after the first",
          file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--url", default="localhost:8001", help="gRPC address (default localhost:8001)")
    parser.add_argument("--model", default="laminar")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each response")
    args = parser.parse_args()
    sampling = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "ignore_eos": args.ignore_eos}
    if args.seed is not None:
        sampling["seed"] = args.seed
    try:
        return stream(args.url, args.model, args.prompt, sampling, args.timeout)
    except InferenceServerException as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

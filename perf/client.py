"""Stream one prompt from a Laminar Triton server over gRPC, printing tokens as they arrive,
then time to first token and token rate.

    python perf/client.py "Once upon a time" --max-tokens 64 --temperature 0
"""
from __future__ import annotations

import argparse
import sys
import uuid

from tritonclient.utils import InferenceServerException

from laminar.client.grpc_stream import Stream, request_tensors


def stream(url: str, model: str, prompt: str, sampling: dict, timeout: float) -> int:
    """Prints the completion as it streams; returns a process exit code."""
    grpc = Stream(url)
    try:
        result = grpc.send(uuid.uuid4().hex, request_tensors(prompt, sampling, stream=True), model)
        for response in result.follow(timeout):
            print(response["text_output"][0].decode(), end="", flush=True)
    except TimeoutError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    finally:
        grpc.close()
    if result.error is not None:
        print(f"\nerror: {result.error}", file=sys.stderr)
        return 1
    tokens, (first, last) = len(result.ids), (result.arrivals[0], result.arrivals[-1])
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    print(f"\n\n[{result.finish_reason}] {tokens} tokens, TTFT {(first - result.sent) * 1000:.1f} ms, "
          f"{rate:.1f} tokens/s after the first", file=sys.stderr)
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

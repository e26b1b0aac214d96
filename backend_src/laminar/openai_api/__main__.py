"""`python -m laminar.openai_api`: serve the OpenAI API for a model of a running tritonserver."""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

import uvicorn

from laminar.openai_api.app import build_app
from laminar.openai_api.chat_template import ChatTemplate
from laminar.openai_api.families import family_of


def exit_with_parent() -> None:
    """SIGTERM (uvicorn's graceful stop) when the parent dies: Linux's PR_SET_PDEATHSIG."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--triton-url", default="localhost:8001", help="tritonserver's gRPC endpoint")
    parser.add_argument("--model", default="laminar", help="the Triton model to serve")
    parser.add_argument("--served-model-name", default=None, help="the id clients use (default: --model)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory holding the chat template")
    parser.add_argument("--restart-wait", type=float, default=60.0,
                        help="seconds a request waits for a restarting model before a 503")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when the parent process exits (build.sh serve: tritonserver)")
    args = parser.parse_args()
    if args.exit_with_parent:
        exit_with_parent()
    template = ChatTemplate(args.checkpoint) if args.checkpoint else None
    app = build_app(args.triton_url, args.model, args.served_model_name or args.model, template,
                    family_of(args.checkpoint), args.restart_wait)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

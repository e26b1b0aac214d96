"""How a request can end without a result.

Each kind maps to one Triton error code in model.py, and so to an HTTP status and a gRPC code a
client can act on: a client mistake is not worth retrying, a server going away is.
"""
from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    INVALID = "invalid"          # the request is wrong: HTTP 400, gRPC INVALID_ARGUMENT
    CANCELLED = "cancelled"      # the client cancelled or went away: gRPC CANCELLED
    UNAVAILABLE = "unavailable"  # the server is shutting down: HTTP 503, gRPC UNAVAILABLE
    INTERNAL = "internal"        # the engine failed: HTTP 500, gRPC INTERNAL

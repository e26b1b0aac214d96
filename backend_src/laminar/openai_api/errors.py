"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the HTTP status."""
from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class Unavailable(APIError):
    """tritonserver or its model cannot take requests now (starting, restarting, stopping)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message, type="server_error", code="model_not_ready")


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


async def on_api_error(_: Request, e: APIError) -> JSONResponse:
    return e.response()


async def on_validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI answers 422 with its own shape; OpenAI clients expect 400 and an error object."""
    first = e.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return bad_request(f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param).response()

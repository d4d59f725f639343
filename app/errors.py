"""The service's error type: every refusal is a status, a stable code and a human message."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("app")


class ServiceError(Exception):
    """Answered as ``{"error": code, "detail": detail}`` with ``status`` (and ``headers``, e.g. Retry-After).

    ``reason`` labels the rejection counter in /metrics (defaults to ``code``).
    """

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None, reason: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.reason = reason or code


def unavailable(code: str, detail: str, retry_after_s: int = 1) -> ServiceError:
    """503 with Retry-After: queue full, model not ready, draining."""
    return ServiceError(503, code, detail, {"Retry-After": str(retry_after_s)})


def not_ready(detail: str = "the model is loading or warming up") -> ServiceError:
    """503 while the service is starting (loading or warming up the model)."""
    return unavailable("not_ready", detail)


def draining(detail: str = "the server is shutting down") -> ServiceError:
    """503 once SIGTERM has arrived: accepted requests finish, new ones go elsewhere."""
    return unavailable("draining", detail, retry_after_s=5)


def deadline_exceeded() -> ServiceError:
    """504 once a request passes ``LANDMARKS_REQUEST_TIMEOUT_S`` (upload, queue or inference)."""
    return ServiceError(504, "deadline_exceeded", "the request passed its deadline", reason="timeout")


def error_response(error: ServiceError) -> JSONResponse:
    """The one error body: ``{"error": code, "detail": message}`` with the error's status and headers."""
    return JSONResponse({"error": error.code, "detail": error.detail}, status_code=error.status, headers=error.headers)


def _error_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> JSONResponse:
    if status >= 400:
        request.app.state.metrics.rejected.labels(reason or code).inc()
    request.scope.setdefault("state", {})["error"] = code
    return error_response(ServiceError(status, code, detail, headers))


def install_handlers(app: FastAPI) -> None:
    """Every error a route raises (or FastAPI finds) becomes the one error body; anything unexpected is logged
    and answered 500 without a traceback."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error_response(request, exc.status, exc.code, exc.detail, exc.headers, exc.reason)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(request, 422, "validation_error", str(exc.errors()), reason="validation")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(request, exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(request, 500, "internal_error", "an unexpected error occurred; it has been logged")

"""The service's error type: every refusal is a status, a stable code and a human message."""

from __future__ import annotations

from starlette.responses import JSONResponse


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

"""The service's error type: every refusal is a status, a stable code and a human message."""

from __future__ import annotations


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

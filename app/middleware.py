"""Request id, latency metric and one JSON log line per request (pure ASGI, no body buffering)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics

log = logging.getLogger("app.access")


class RedactQuery(logging.Filter):
    """Query strings never reach a log: uvicorn's access line and its WebSocket lines print the whole URL, so a key
    sent by mistake as ``?api_key=...`` (refused, rightly) would be written in clear. Every log argument that is a
    path with a query keeps only the path and ``?[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                a.split("?", 1)[0] + "?[redacted]" if isinstance(a, str) and a.startswith("/") and "?" in a else a
                for a in record.args
            )
        return True


def redact_server_logs() -> None:
    """Install :class:`RedactQuery` on uvicorn's loggers (once per process)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQuery) for f in logger.filters):
            logger.addFilter(RedactQuery())


_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ROUTES = {"/landmarks", "/landmarks/render", "/health/live", "/health/ready", "/v1/model", "/metrics"}


class RequestContext:
    """ASGI middleware: accepts or creates ``X-Request-ID``, echoes it, times and logs the request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        route = scope["path"] if scope["path"] in _ROUTES else "other"
        status = 500
        start = time.perf_counter()
        self.metrics.in_flight.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.in_flight.dec()
            self.metrics.request_latency.labels(route, f"{status // 100}xx").observe(elapsed)
            state: dict[str, Any] = scope.get("state", {})
            log.info(json.dumps({
                "request_id": request_id, "method": scope.get("method"), "route": scope["path"], "status": status,
                "latency_ms": round(1000 * elapsed, 2), "faces": state.get("faces"),
                "batch_sizes": state.get("batch_sizes"), "error": state.get("error"), "caller": state.get("caller"),
            }))  # fmt: skip

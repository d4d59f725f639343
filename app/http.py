"""Connection guards uvicorn's HTTP/1.1 protocol lacks, for a service exposed to slow or hostile clients.

uvicorn (httptools) holds a connection that never sends, or sends its request head a byte at a time, for as long
as the client likes, and accepts request heads of any size and header count. :func:`guarded_protocol` returns
its protocol with:

* a deadline for each request head (from the connection's start, or from the first byte of a later request on a
  kept-alive connection): ``408 request_timeout`` and close when it passes;
* a cap on the head's bytes (request line + headers) and on the number of headers: ``431 headers_too_large``;
* protocol errors (malformed HTTP) answered in the service's JSON error shape instead of uvicorn's plain text.

``dsc-landmarks-serve`` (:func:`app.server.run`) uses it; with the ``uvicorn`` command pass
``--http app.http:GuardedHttpToolsProtocol``. The limits come from the ``LANDMARKS_HEADER_*`` settings through
the app's lifespan state (``head_limits``), so every worker process has them; without it, the defaults.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class HeadLimits:
    timeout_s: float = 10.0
    max_bytes: int = 16_384
    max_headers: int = 100


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards above."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.app_state.get("head_limits")
        self.limits = limits if isinstance(limits, HeadLimits) else HeadLimits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._start_head()

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""
        self._header_count = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def _end_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            head_part = len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
            self._head_bytes += head_part
            if self._head_bytes > self.limits.max_bytes:
                self._refuse(431, "headers_too_large", f"the request head exceeds {self.limits.max_bytes} bytes")
                return
            self._head_tail = window[-3:]
        super().data_received(data)

    def on_message_begin(self) -> None:
        if not self._in_head:  # the next request on a kept-alive connection
            self._start_head()
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(431, "headers_too_large", f"more than {self.limits.max_headers} header fields")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._end_head()
        if not self.transport.is_closing():  # refused while parsing: no request cycle for it
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.cycle is not None and not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.cycle is not None and not self.transport.is_closing():
            super().on_message_complete()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "request_timeout", f"the request head did not arrive within {self.limits.timeout_s} s")

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "bad_request", msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def _refuse(self, status: int, code: str, detail: str) -> None:
        self._end_head()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": code, "detail": detail}).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()

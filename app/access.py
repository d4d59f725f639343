"""Who may call the service: optional API keys and per-caller rate limits, checked before a body is read.

* **Keys** (``LANDMARKS_API_KEYS``: ``key1,key2`` or ``@/path/to/file`` with one key per line): when set, every
  request except :data:`OPEN_PATHS` needs ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; a missing or
  wrong key gets ``401 unauthorized`` with ``WWW-Authenticate``. A presented key is compared with every known key
  in constant time (their SHA-256 digests, so lengths do not leak either), never logged: logs and metrics name
  the caller by :func:`key_id`, the first 8 hex digits of the key's SHA-256.
* **Rate limit** (``LANDMARKS_RATE_LIMIT`` requests/s, ``LANDMARKS_RATE_BURST``): a token bucket per caller — the
  key's id when keys are on, else the client address — ``429 rate_limited`` with ``Retry-After`` when empty.
  Per process: with ``LANDMARKS_WORKERS`` = N each worker keeps its own buckets.

The static pages (``/``, ``/docs`` and their assets, ``/openapi.json``) stay open: they hold no data, and a browser
cannot send a header when it navigates; the API calls they make need the key (the demo page asks for it).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ServiceError, error_response
from app.metrics import Metrics

OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/", "/docs", "/openapi.json", "/favicon.ico"})
OPEN_PREFIXES = ("/docs/assets/",)
MAX_CALLERS = 10_000  # buckets kept; the least recently seen caller's is dropped beyond this


class KeyFileError(ValueError):
    """``LANDMARKS_API_KEYS=@path`` names a file that cannot be read or holds no key."""


def key_id(key: str) -> str:
    """A short, non-reversible name for a key (logs, metrics, rate-limit buckets)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def parse_keys(spec: str) -> frozenset[str]:
    """``k1,k2`` or ``@file`` (one key per line, ``#`` comments) -> the keys, stripped of surrounding space."""
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"API key file {path} cannot be read: {exc}") from None
        items = [line for line in text.splitlines() if not line.strip().startswith("#")]
    else:
        items = spec.split(",")
    keys = frozenset(k.strip() for k in items if k.strip())
    if not keys:
        raise KeyFileError(f"LANDMARKS_API_KEYS={spec if not spec.startswith('@') else spec!r} holds no key")
    return keys


class KeyRing:
    """The accepted keys, kept only as SHA-256 digests; :meth:`match` is constant-time over all of them."""

    def __init__(self, keys: frozenset[str]) -> None:
        self._digests = {hashlib.sha256(k.encode("utf-8")).digest(): key_id(k) for k in keys}

    def match(self, presented: str) -> str | None:
        """The presented key's id when it is one of ours, else None (no early exit: every key is compared)."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, ident in self._digests.items():
            if hmac.compare_digest(known, digest):
                found = ident
        return found


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per caller: ``rate`` tokens per second up to ``burst``; a request takes one."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    def take(self, caller: str) -> float:
        """0 when the request may go, else the seconds until a token is there (the Retry-After)."""
        now = self._clock()
        bucket = self._buckets.pop(caller, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[caller] = bucket  # most recently seen last
        while len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def presented_key(scope: Scope) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key`` (latin-1 as HTTP sends it; never raises)."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def unauthorized(detail: str) -> ServiceError:
    return ServiceError(401, "unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="dsc-landmarks"'})


class AccessControl:
    """ASGI middleware: API keys and rate limits (module docstring), before anything reads the body."""

    def __init__(self, app: ASGIApp, keys: KeyRing | None, limiter: RateLimiter | None, metrics: Metrics) -> None:
        self.app, self.keys, self.limiter, self.metrics = app, keys, limiter, metrics

    async def respond(self, scope: Scope, send: Send, error: ServiceError) -> None:
        self.metrics.rejected.labels(error.reason).inc()
        scope.setdefault("state", {})["error"] = error.code
        await error_response(error)(scope, _no_body, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS":  # a CORS preflight that the CORS layer did not answer
            await self.app(scope, receive, send)
            return
        caller = None
        if self.keys is not None:
            presented = presented_key(scope)
            if presented is None:
                await self.respond(scope, send, unauthorized("an API key is required: Authorization: Bearer <key>"))
                return
            caller = self.keys.match(presented)
            if caller is None:
                await self.respond(scope, send, unauthorized("the API key is not valid"))
                return
            caller = f"key:{caller}"
        scope.setdefault("state", {})["caller"] = caller
        if self.limiter is not None:
            client = scope.get("client")
            wait = self.limiter.take(caller or f"addr:{client[0] if client else 'unknown'}")
            if wait > 0:
                retry = str(max(1, math.ceil(wait)))
                detail = f"over the rate limit of {self.limiter.rate:g} requests/s; retry in {retry} s"
                await self.respond(scope, send, ServiceError(429, "rate_limited", detail, {"Retry-After": retry}))
                return
        await self.app(scope, receive, send)

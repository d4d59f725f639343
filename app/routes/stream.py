"""``/landmarks/stream``: a WebSocket that takes video frames and answers each with its tracked faces.

Protocol (also in the README and at ``/docs``):

* **Connect** to ``ws://host/landmarks/stream`` with optional query parameters :data:`PARAMETERS`. With API keys
  on, send the key as ``Authorization: Bearer`` / ``X-API-Key`` (non-browser clients), or — a browser cannot set
  headers — as the sub-protocol ``key.<KEY>`` next to :data:`PROTOCOL` (``new WebSocket(url, ["landmarks.v1",
  "key." + key])``; the server answers ``landmarks.v1``, never the key), or in a first JSON text message
  ``{"api_key": "..."}``. A key in the URL is refused: URLs end up in logs.
* **Options** may also come in that first text message (``{"detect_every": 5, "smoothing": false}``); a client that
  sends frames straight away gets the defaults.
* **Frames**: each binary message is one JPEG, PNG, WebP or BMP image (at most ``LANDMARKS_MAX_UPLOAD_BYTES``).
  Each is answered with one text message, :class:`app.schemas.StreamFrame` (``POST /landmarks``'s JSON plus
  ``sequence``, ``dropped``, ``detected`` and each face's ``track_id``), or :class:`app.schemas.StreamError` for
  that frame; the stream goes on either way.
* **Bounded**: while the model is busy the server holds ``LANDMARKS_STREAM_BUFFER`` frames and drops the oldest
  beyond that (the next answer's ``dropped`` counts them); no message for ``LANDMARKS_STREAM_IDLE_TIMEOUT_S``
  closes the stream (1000); a drain closes it after the frame in progress (1001); a refused connection gets a
  :class:`StreamError` and then 1008 (key) or 1013 (not ready, too many streams).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from app.access import KeyRing, RateLimiter, presented_key
from app.errors import ServiceError
from app.metrics import Metrics
from app.responses import to_response
from app.schemas import StreamError, StreamFrame
from app.service import LandmarkService
from model.tracking import Tracker, TrackOptions

router = APIRouter()
log = logging.getLogger("app.access")

PROTOCOL = "landmarks.v1"
KEY_PREFIX = "key."
ROUTE = "/landmarks/stream"
PARAMETERS = {
    "detect_every": "frames between detector runs while faces are tracked (default 10; 1: every frame)",
    "smoothing": "true | false: the One Euro filter on the points (default true)",
    "min_cutoff": "Hz, the filter's cut-off for a still face: lower is steadier but slower (default 1.0)",
    "beta": "how fast the cut-off opens with speed: higher follows fast motion with less lag (default 10)",
    "max_faces": "most faces tracked (default and upper limit LANDMARKS_MAX_FACES)",
}
NORMAL, GOING_AWAY, POLICY, TRY_LATER = 1000, 1001, 1008, 1013
DOCS = (
    "### Video: `ws://<host>/landmarks/stream` (WebSocket)\n\n"
    "Send each frame as one binary message (JPEG, PNG, WebP or BMP); each is answered with one JSON text message: "
    "the `POST /landmarks` answer plus `sequence` (the frame's number), `dropped` (frames dropped since the last "
    "answer because the client sent faster than the model answers), `detected` (whether the detector ran) and a "
    '`track_id` per face, or `{"error", "detail", "sequence"}` for that frame; the stream goes on.\n\n'
    "Options, as query parameters or a first JSON text message (all optional):\n\n"
    + "".join(f"* `{k}`: {v}\n" for k, v in PARAMETERS.items())
    + "\nAPI key (when keys are on): `Authorization: Bearer` or `X-API-Key` headers, or from a browser the "
    'sub-protocols `["landmarks.v1", "key.<KEY>"]`, or `{"api_key": "<KEY>"}` as the first message; never '
    "in the URL. Close codes: 1000 client or idle timeout, 1001 server draining, 1008 bad key or options, 1013 not "
    "ready or too many streams."
)


class StreamRefusal(Exception):  # noqa: N818 - a refusal, not an error of ours
    """A connection-level refusal: an error message, then a close with ``code``."""

    def __init__(self, code: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.error, self.detail = code, error, detail


def parse_options(values: dict[str, Any], max_faces_limit: int) -> tuple[TrackOptions, int]:
    """Stream options from query parameters or a first JSON message -> (tracking options, max faces)."""
    options, max_faces = TrackOptions(), max_faces_limit
    for name, raw in values.items():
        if name == "api_key":
            continue
        if name not in PARAMETERS:
            raise StreamRefusal(POLICY, "invalid_options", f"unknown option {name!r}; known: {', '.join(PARAMETERS)}")
        try:
            if name == "smoothing":
                text = str(raw).strip().lower()
                if text not in ("true", "false", "1", "0", "on", "off"):
                    raise ValueError
                options = replace(options, smoothing=text in ("true", "1", "on"))
            elif name in ("detect_every", "max_faces"):
                value = int(raw) if not isinstance(raw, bool) else None
                if value is None or str(raw).strip() != str(value):
                    raise ValueError
                if name == "max_faces":
                    if not 1 <= value <= max_faces_limit:
                        raise StreamRefusal(POLICY, "invalid_options", f"max_faces must be in 1..{max_faces_limit}")
                    max_faces = value
                else:
                    options = replace(options, detect_every=value)
            else:
                number = float(raw)
                if not math.isfinite(number):
                    raise ValueError
                options = replace(options, min_cutoff=number) if name == "min_cutoff" else replace(options, beta=number)
        except (TypeError, ValueError, OverflowError):  # int(inf) overflows: JSON allows Infinity
            raise StreamRefusal(POLICY, "invalid_options", f"{name}={raw!r}: {PARAMETERS[name]}") from None
    problem = options.problem()
    if problem:
        raise StreamRefusal(POLICY, "invalid_options", problem)
    return options, max_faces


def subprotocol_key(offered: list[str]) -> str | None:
    for value in offered:
        if value.startswith(KEY_PREFIX) and len(value) > len(KEY_PREFIX):
            return value[len(KEY_PREFIX) :]
    return None


@dataclass
class Session:
    """One connection's state: its tracker, the frames waiting, and what it has answered."""

    websocket: WebSocket
    service: LandmarkService
    tracker: Tracker
    caller: str
    limiter: RateLimiter | None
    metrics: Metrics
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # a frame is waiting
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one send at a time
    received: int = 0
    dropped: int = 0  # since the last answer
    dropped_total: int = 0
    answered: int = 0
    errors: int = 0
    closing: bool = False
    busy: bool = False  # a frame is being answered

    def __post_init__(self) -> None:
        self.buffer: collections.deque[tuple[int, bytes]] = collections.deque(
            maxlen=self.service.settings.stream_buffer
        )

    async def send(self, payload: str) -> bool:
        """False when the client has gone (a disconnect mid-frame is not an error)."""
        async with self.lock:
            if self.websocket.application_state != WebSocketState.CONNECTED:
                return False
            try:
                await self.websocket.send_text(payload)
            except Exception:  # noqa: BLE001 - the peer went away between the check and the send
                return False
        return True

    async def error(self, error: str, detail: str, sequence: int | None) -> bool:
        self.errors += 1
        self.metrics.rejected.labels(error).inc()
        return await self.send(StreamError(error=error, detail=detail, sequence=sequence).model_dump_json())

    def take(self, data: bytes) -> tuple[int, str, str] | None:
        """Queue one frame (dropping the oldest beyond the buffer); the refusal for it, if any."""
        sequence = self.received
        self.received += 1
        limit = self.service.settings.max_upload_bytes
        if len(data) > limit:
            return sequence, "payload_too_large", f"the frame exceeds the {limit} byte upload limit"
        if not data:
            return sequence, "validation_error", "an empty frame"
        if self.limiter is not None:
            wait = self.limiter.take(self.caller)
            if wait > 0:
                return sequence, "rate_limited", f"over the rate limit of {self.limiter.rate:g} frames/s"
        if len(self.buffer) == self.buffer.maxlen:
            self.buffer.popleft()
            self.dropped += 1
            self.dropped_total += 1
            self.metrics.stream_frames.labels("dropped").inc()
        self.buffer.append((sequence, data))
        self.wake.set()
        return None

    async def receive(self, idle_s: float) -> int:
        """Read messages until the client leaves (returns its close code) or is idle too long (raises)."""
        while True:
            try:
                message = await asyncio.wait_for(self.websocket.receive(), idle_s)
            except TimeoutError:
                if self.busy or self.buffer:  # idle means nothing sent and nothing left to answer
                    continue
                raise
            if message["type"] == "websocket.disconnect":
                return int(message.get("code", NORMAL))
            data = message.get("bytes")
            if data is None:
                await self.error("invalid_message", "frames are binary messages; options only come first", None)
                continue
            refused = self.take(data)
            if refused is not None:
                await self.error(refused[1], refused[2], refused[0])

    async def work(self) -> None:
        """Answer the waiting frames, newest kept, one at a time (the tracker needs them in order)."""
        while not self.closing:
            await self.wake.wait()
            self.wake.clear()
            while self.buffer and not self.closing:
                sequence, data = self.buffer.popleft()
                dropped, self.dropped = self.dropped, 0
                self.busy = True
                try:
                    if not await self.answer(sequence, data, dropped):
                        return
                finally:
                    self.busy = False
        self.buffer.clear()

    async def answer(self, sequence: int, data: bytes, dropped: int) -> bool:
        service = self.service
        loop = asyncio.get_running_loop()
        deadline = loop.time() + service.settings.request_timeout_s
        start = time.perf_counter()
        status = "2xx"
        try:
            async with service.lifecycle.accept(), asyncio.timeout_at(deadline):
                prediction = await service.frame(data, self.tracker, deadline)
        except TimeoutError:
            status = "5xx"
            return await self.error("deadline_exceeded", "the frame passed its deadline", sequence)
        except ServiceError as exc:
            status = f"{exc.status // 100}xx"
            return await self.error(exc.code, exc.detail, sequence)
        except Exception:  # noqa: BLE001 - one bad frame must not end the stream or reach the client as a trace
            status = "5xx"
            log.exception("unexpected error on a stream frame")
            return await self.error("internal_error", "an unexpected error occurred; it has been logged", sequence)
        finally:
            self.metrics.request_latency.labels(ROUTE, status).observe(time.perf_counter() - start)
        self.answered += 1
        self.metrics.stream_frames.labels("answered").inc()
        body = to_response(prediction, service.engine).model_dump()
        frame = StreamFrame(**body, sequence=sequence, dropped=dropped, detected="detect" in prediction.timings_ms)
        return await self.send(frame.model_dump_json())


async def refuse(websocket: WebSocket, refusal: StreamRefusal, subprotocol: str | None, metrics: Metrics) -> None:
    metrics.rejected.labels(refusal.error).inc()
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept(subprotocol=subprotocol)
    with contextlib.suppress(Exception):
        await websocket.send_text(StreamError(error=refusal.error, detail=refusal.detail).model_dump_json())
        await websocket.close(refusal.code, refusal.detail[:120])


async def first_message(
    websocket: WebSocket, service: LandmarkService, keys: KeyRing | None, key: str | None
) -> tuple[str | None, TrackOptions, int, bytes | None]:
    """Read the first message: options and key as JSON text, or straight away a frame. Returns the caller (the
    key's id, or ``None`` without keys), the options, max faces, and the frame if the first message was one."""
    values: dict[str, Any] = dict(websocket.query_params)
    first: bytes | None = None
    message = await asyncio.wait_for(websocket.receive(), service.settings.stream_idle_timeout_s)
    if message["type"] == "websocket.disconnect":
        raise StreamRefusal(NORMAL, "disconnected", "the client left before its first message")
    if message.get("bytes") is not None:
        first = message["bytes"]
    else:
        try:
            sent = json.loads(message.get("text") or "")
        except ValueError:
            sent = None
        if not isinstance(sent, dict):
            raise StreamRefusal(POLICY, "invalid_message", "a first text message must be a JSON object of options")
        if isinstance(sent.get("api_key"), str):
            key = sent["api_key"]
        values.update(sent)
    options, max_faces = parse_options(values, service.settings.max_faces)
    caller = None
    if keys is not None:
        if key is None:
            raise StreamRefusal(POLICY, "unauthorized", "an API key is required: a header, the key.<KEY> sub-protocol "
                          "or {\"api_key\": ...} as the first message")  # fmt: skip
        ident = keys.match(key)
        if ident is None:
            raise StreamRefusal(POLICY, "unauthorized", "the API key is not valid")
        caller = f"key:{ident}"
    return caller, options, max_faces, first


async def run_session(session: Session, first: bytes | None) -> int:
    """Receive and answer until the client leaves, goes idle, or the server drains; the close code."""
    service, websocket = session.service, session.websocket
    if first is not None:
        refused = session.take(first)
        if refused is not None:
            await session.error(refused[1], refused[2], refused[0])
    receiver = asyncio.create_task(session.receive(service.settings.stream_idle_timeout_s))
    worker = asyncio.create_task(session.work())
    drain = asyncio.create_task(service.lifecycle.wait_draining())
    code, reason = NORMAL, ""
    try:
        done, _ = await asyncio.wait({receiver, worker, drain}, return_when=asyncio.FIRST_COMPLETED)
        if receiver in done:
            if receiver.exception() is None:
                return receiver.result()  # the client closed
            code, reason = NORMAL, "idle timeout"
        elif drain in done:
            receiver.cancel()
            session.closing = True  # the frame in progress is answered, the waiting ones are not
            session.wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(worker), service.settings.drain_timeout_s)
            code, reason = GOING_AWAY, "server draining"
    finally:
        for task in (receiver, worker, drain):
            task.cancel()
        await asyncio.wait({receiver, worker, drain})
    with contextlib.suppress(Exception):
        async with session.lock:
            await websocket.close(code, reason)
    return code


@router.websocket(ROUTE)
async def stream(websocket: WebSocket) -> None:
    app = websocket.app
    metrics: Metrics = app.state.metrics
    offered: list[str] = list(websocket.scope.get("subprotocols", []))
    subprotocol = PROTOCOL if PROTOCOL in offered else None
    service: LandmarkService | None = getattr(app.state, "service", None)
    start = time.perf_counter()
    session: Session | None = None
    close_code: int | None = None
    caller = None
    try:
        if "api_key" in websocket.query_params:
            raise StreamRefusal(POLICY, "unauthorized", "send the key in a header, the key.<KEY> sub-protocol or the "
                          "first message, never in the URL (URLs are logged)")  # fmt: skip
        if service is None or not service.ready:
            raise StreamRefusal(TRY_LATER, "draining" if service is not None and service.draining else "not_ready",
                          "the server is not ready (starting or shutting down)")  # fmt: skip
        if service.streams >= service.settings.max_streams:
            raise StreamRefusal(TRY_LATER, "too_many_streams", f"{service.settings.max_streams} streams are open")
        parse_options(dict(websocket.query_params), service.settings.max_faces)  # refuse bad ones before reading
        await websocket.accept(subprotocol=subprotocol)
        service.streams += 1
        metrics.streams.inc()
        try:
            key = presented_key(websocket.scope) or subprotocol_key(offered)
            caller, options, max_faces, first = await first_message(websocket, service, app.state.keys, key)
            if caller is None and websocket.client is not None:
                caller = f"addr:{websocket.client.host}"
            tracker = Tracker(service.pipeline, options, max_faces)
            session = Session(websocket, service, tracker, caller or "addr:unknown", app.state.limiter, metrics)
            close_code = await run_session(session, first)
        except TimeoutError:
            raise StreamRefusal(NORMAL, "idle_timeout", "no message within LANDMARKS_STREAM_IDLE_TIMEOUT_S") from None
        finally:
            service.streams -= 1
            metrics.streams.dec()
    except StreamRefusal as refusal:
        close_code = refusal.code
        if refusal.error != "disconnected":
            await refuse(websocket, refusal, subprotocol, metrics)
    finally:
        log.info(json.dumps({
            "route": ROUTE, "close": close_code, "seconds": round(time.perf_counter() - start, 2),
            "frames": session.received if session else 0, "answered": session.answered if session else 0,
            "dropped": session.dropped_total if session else 0, "errors": session.errors if session else 0,
            "caller": caller,
        }))  # fmt: skip

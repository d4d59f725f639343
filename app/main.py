"""The FastAPI application: ``uvicorn app.main:app`` (or ``dsc-landmarks-serve``, :mod:`app.server`) serves the
committed checkpoint.

``create_app(settings)`` builds an app; the model is loaded and checked in the lifespan (a bad checkpoint stops
the start with a clear message), warmed up in the background (``/health/ready`` is 503 until then), and on
SIGTERM the service drains: ready turns 503, new requests get 503, queued faces finish, then uvicorn exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError

from app.access import AccessControl, KeyRing, RateLimiter, parse_keys
from app.docs import document_keys, install_docs
from app.errors import install_handlers
from app.host import share_cores
from app.http import HeadLimits
from app.metrics import Metrics, serve_metrics
from app.middleware import RequestContext, redact_server_logs
from app.routes import landmarks, ops, stream
from app.service import LandmarkService, ServiceFactory, load_service
from app.settings import Settings
from app.startup import StartupError, load_parts

log = logging.getLogger("app")


def _watch_sigterm(app: FastAPI, service: LandmarkService) -> None:
    """Drain on SIGTERM before handing the signal to uvicorn (which then stops accepting and exits)."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    async def drain_then_exit() -> None:
        log.info("SIGTERM: draining (up to %.0f s)", service.settings.drain_timeout_s)
        finished = await service.stop()
        log.info("drain %s; shutting down", "complete" if finished else "timed out")
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)
        if callable(previous):
            previous(signal.SIGTERM, None)
        else:
            signal.raise_signal(signal.SIGTERM)

    def on_sigterm() -> None:
        if not service.draining:
            service.begin_drain()  # refuse from this instant; the task drains
            loop.create_task(drain_then_exit())

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (tests) or no signals (Windows)
        log.debug("SIGTERM drain handler not installed")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    log.info("settings: %s", settings.model_dump_json())
    share_cores(settings)
    # Load and check the checkpoint now: a missing, corrupt or mismatched file stops the start right here.
    service: LandmarkService = await app.state.connect(settings, metrics)
    engine = service.engine
    metrics.model_info.labels(
        engine.name,
        engine.version,
        engine.config.name,
        str(engine.device),
        engine.precision,
    ).set(1)
    log.info("serving %s %s (%s) on %s, %s", engine.name, engine.version, engine.config.name, engine.device,
             engine.precision)  # fmt: skip
    app.state.service = service
    warmup = asyncio.create_task(service.start())
    if app.state.handle_signals:
        _watch_sigterm(app, service)
    # One process: the metrics port is served from here; several workers: by dsc-landmarks-serve's supervisor.
    exporter = (
        serve_metrics(settings.metrics_port, settings.metrics_host, metrics.registry)
        if metrics.multiprocess_dir is None
        else None
    )
    try:
        limits = HeadLimits(settings.header_timeout_s, settings.max_header_bytes, settings.max_headers)
        yield {"head_limits": limits}  # lifespan state: the connection guards of every worker read it
    finally:
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
        if not warmup.done():
            warmup.cancel()
        if not service.draining:
            await service.stop()
        metrics.process_exited(os.getpid())


def read_settings() -> Settings:
    """``LANDMARKS_*`` from the environment; a bad value exits with one line per variable."""
    _configure_logging()
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  LANDMARKS_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else f"  {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        ]
        sys.exit("invalid settings:\n" + "\n".join(lines))


def create_app(
    settings: Settings | None = None,
    handle_signals: bool = True,
    connect: ServiceFactory | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """Build the service. Without ``settings`` they are read from ``LANDMARKS_*`` (a bad value exits with a message).
    ``connect`` builds the service (default: this process's batcher around the settings' engine; a cluster's
    ingress runs the same app around a remote model), ``metrics`` the Prometheus registry (the cluster's go to
    Ray's metrics)."""
    if settings is None:  # the server's path (uvicorn, or each worker process of dsc-landmarks-serve)
        settings = read_settings()
        try:
            parts = load_parts(settings)  # each artefact read once, here, for the whole process
        except StartupError as exc:
            sys.exit(f"cannot start: {exc}")
        connect = connect or functools.partial(load_service, parts=parts)
    if metrics is None:
        metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    redact_server_logs()
    app = FastAPI(
        title="dsc-landmarks",
        version="0.1.0",
        summary="68-point facial landmarks (dilated skip convolution network, Chim et al. 2019)",
        description=stream.DOCS,
        lifespan=lifespan,
        docs_url=None,  # served below from packaged assets: FastAPI's default page loads them from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.handle_signals = handle_signals
    app.state.connect = connect or load_service
    app.include_router(landmarks.router)
    app.include_router(ops.router)
    app.include_router(stream.router)
    install_docs(app)
    install_handlers(app)
    _install_access(app, settings, metrics)
    app.add_middleware(RequestContext, metrics=metrics)  # outermost: times and logs every answer, refusals too
    return app


def _install_access(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """API keys and rate limits (inner), CORS around them (so a 401 or 429 still carries CORS headers)."""
    keys = KeyRing(parse_keys(settings.api_keys.get_secret_value())) if settings.api_keys else None
    limiter = None
    if settings.rate_limit:
        limiter = RateLimiter(settings.rate_limit, settings.rate_burst or max(1, math.ceil(settings.rate_limit)))
    app.state.keys, app.state.limiter = keys, limiter  # the video stream checks its own (app.routes.stream)
    if keys is not None or limiter is not None:
        app.add_middleware(AccessControl, keys=keys, limiter=limiter, metrics=metrics)
    if keys is not None:
        document_keys(app)
    origins = settings.cors_origin_list()
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app on first access, so importing this module has no side effects.
    if name == "app":
        _configure_logging()
        return create_app()
    raise AttributeError(name)

"""The FastAPI application: ``uvicorn app.main:app`` (or ``dsc-landmarks-serve``) serves the committed checkpoint.

``create_app(settings)`` builds an app; the model is loaded and checked in the lifespan (a bad checkpoint stops
the start with a clear message), warmed up in the background (``/health/ready`` is 503 until then), and on
SIGTERM the service drains: ready turns 503, new requests get 503, queued faces finish, then uvicorn exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import math
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import cv2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, multiprocess, start_http_server
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from app.access import AccessControl, KeyRing, RateLimiter, parse_keys
from app.errors import ServiceError, error_response
from app.http import HeadLimits
from app.metrics import Metrics
from app.middleware import RequestContext, redact_server_logs
from app.routes import landmarks, ops, stream
from app.service import LandmarkService, ServiceFactory, load_service
from app.settings import Settings
from app.startup import StartupError, load_parts, startup_problem

log = logging.getLogger("app")


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


def _install_handlers(app: FastAPI) -> None:
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


def _share_cores(settings: Settings) -> None:
    """Thread pools inside torch and OpenCV: one process may use every core; LANDMARKS_WORKERS processes share
    them (each one's pools default to cores / workers, so 16 workers do not start 16 x 16 spinning threads)."""
    share = settings.core_share()
    if settings.runtime == "torch" and (settings.torch_threads or settings.workers > 1):
        import torch  # the onnxruntime service has no torch; ONNX Runtime's threads are set on its session

        torch.set_num_threads(settings.torch_threads or share)
    cv2.setNumThreads(settings.opencv_threads or share)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    log.info("settings: %s", settings.model_dump_json())
    _share_cores(settings)
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
    exporter = serve_metrics(settings, metrics.registry) if metrics.multiprocess_dir is None else None
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


def _install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the ``swagger-ui-bundle-v2`` package, so it works offline and behind firewalls."""
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} — API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


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
    _install_docs(app)
    _install_handlers(app)
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
        _document_keys(app)
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


def _document_keys(app: FastAPI) -> None:
    """/docs gets an Authorize button: the schema declares both ways of sending a key."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve_metrics(settings: Settings, registry: CollectorRegistry) -> WSGIServer | None:
    """``/metrics`` on ``LANDMARKS_METRICS_PORT`` (a thread of this process), when set."""
    if settings.metrics_port is None:
        return None
    server, _ = start_http_server(settings.metrics_port, settings.metrics_host, registry)
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return server


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app on first access, so importing this module has no side effects.
    if name == "app":
        _configure_logging()
        return create_app()
    raise AttributeError(name)


def server_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="serve the landmark API")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--timeout-graceful-shutdown", type=float, default=30.0, help="after the drain, seconds")
    return parser.parse_args(argv)


def uvicorn_options(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """How uvicorn serves the app: the connection guards of :mod:`app.http`, keep-alive, graceful shutdown."""
    from app.http import GuardedHttpToolsProtocol

    return {
        "host": args.host,
        "port": args.port,
        "http": GuardedHttpToolsProtocol,
        "timeout_keep_alive": settings.keep_alive_s,
        "access_log": False,  # app.access writes one structured line per request; uvicorn's would be a second
        "timeout_graceful_shutdown": args.timeout_graceful_shutdown,
        # /landmarks/stream answers a frame over LANDMARKS_MAX_UPLOAD_BYTES with an error message; only a message
        # past this protocol limit closes the stream (1009)
        "ws_max_size": max(16 * 1024 * 1024, 2 * settings.max_upload_bytes),
    }


def run(argv: list[str] | None = None) -> None:
    """Console script: ``dsc-landmarks-serve [--host H] [--port P]`` — uvicorn with the connection guards of
    :mod:`app.http`, and ``LANDMARKS_WORKERS`` processes (each with its model copy and batcher; metrics in
    prometheus_client's multi-process mode, summed over the workers)."""
    import uvicorn

    args = server_args(argv)
    settings = read_settings()
    common = uvicorn_options(settings, args)
    if settings.workers == 1:
        uvicorn.run(create_app(), **common)  # loads each artefact once, before uvicorn serves
        return
    problem = startup_problem(settings)  # the supervisor only checks: each worker process loads its own
    if problem:
        sys.exit(f"cannot start: {problem}")
    folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="dsc-landmarks-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)  # the spawned workers inherit it
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # values of an earlier run would be summed in
        stale.unlink()
    if settings.metrics_port is not None:  # the workers share files; this supervisor serves their sum
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(folder))
        serve_metrics(settings, registry)
    uvicorn.run("app.main:create_app", factory=True, workers=settings.workers, **common)


if __name__ == "__main__":
    run()

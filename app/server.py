"""The launcher: ``dsc-landmarks-serve [--host H] [--port P]`` (or ``python -m app.server``) — uvicorn with the
connection guards of :mod:`app.http`, one process or ``LANDMARKS_WORKERS`` of them."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, multiprocess

from app.main import create_app, read_settings
from app.metrics import serve_metrics
from app.settings import Settings
from app.startup import startup_problem


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
        serve_metrics(settings.metrics_port, settings.metrics_host, registry)
    uvicorn.run("app.main:create_app", factory=True, workers=settings.workers, **common)


if __name__ == "__main__":
    run()

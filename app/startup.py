"""What a server process loads and checks before it serves, in one place: each artefact is read once.

:func:`load_parts` checks the settings that need no file (device, precision, the key file, the metrics port), then
loads the network on its inference thread (the thread that will run it), YuNet and the head model, and hands them
to the service. Whatever stops the start is a :class:`StartupError` with one line naming the variable or file;
the server path (:func:`app.main.create_app` without settings) exits with it before uvicorn serves.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.access import KeyFileError, parse_keys
from app.batcher import inference_thread
from app.settings import Settings
from model.artifacts import CheckpointError, ConventionError
from model.detector import DetectorError, YuNetDetector
from model.engine import Engine
from model.pose import HeadModel
from model.runtime import load_engine as load_runtime_engine


class StartupError(Exception):
    """Why this process cannot serve, in one line that names the setting or file."""


@dataclass
class Parts:
    """What a server process loaded: the engine and the thread it was loaded on and runs on (``None`` for a cluster
    ingress, which holds no network), the detector and the head model (``None``: pose off)."""

    engine: Engine | None
    worker: ThreadPoolExecutor | None
    detector: YuNetDetector
    head: HeadModel | None


def load_engine(settings: Settings) -> Engine:
    """The served model on its runtime: the checkpoint on torch (the settings' device, precision, batch size and
    graphs), or the exported ONNX file on ONNX Runtime's CPU provider (imported only then: no torch needed)."""
    return load_runtime_engine(settings.engine_options())


def listen_problem(host: str, port: int) -> str | None:
    """Why this process could not listen on ``host:port`` (in use, no such address, not allowed), or None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own bind
            probe.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port} ({exc.strerror or exc})"
    return None


def runtime_problem(settings: Settings) -> str | None:
    """The device and precision for the chosen runtime (torch is imported only for torch); no file is read."""
    if settings.runtime == "onnxruntime":
        if settings.device not in ("auto", "cpu"):
            return f"LANDMARKS_DEVICE={settings.device}: LANDMARKS_RUNTIME=onnxruntime runs on the CPU (auto or cpu)"
        if settings.precision not in ("auto", "fp32"):
            return f"LANDMARKS_PRECISION={settings.precision}: the ONNX model runs in fp32 (auto or fp32)"
        return None
    from model.inference import resolve_device, resolve_precision

    try:
        device = resolve_device(settings.device)
    except (ValueError, RuntimeError) as exc:
        return f"LANDMARKS_DEVICE={settings.device}: {exc}"
    try:
        resolve_precision(settings.precision, device)
    except ValueError as exc:
        return f"LANDMARKS_PRECISION={settings.precision}: {exc}"
    return None


def settings_problem(settings: Settings, runtime: bool = True) -> str | None:
    """What would stop the start without reading any model file: runtime settings, the key file, the metrics
    port. ``runtime=False``: a cluster's ingress, which holds no network."""
    problem = runtime_problem(settings) if runtime else None
    if problem:
        return problem
    if settings.api_keys is not None:
        try:
            parse_keys(settings.api_keys.get_secret_value())
        except KeyFileError as exc:
            return f"LANDMARKS_API_KEYS: {exc}"
    # The process that will serve the metrics port checks it: one server process, or the supervisor of several
    # workers (before it starts them; the workers it spawns have PROMETHEUS_MULTIPROC_DIR and share its port).
    if settings.metrics_port is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None:
        problem = listen_problem(settings.metrics_host, settings.metrics_port)
        if problem:
            return f"LANDMARKS_METRICS_PORT={settings.metrics_port}: {problem}"
    return None


def load_parts(settings: Settings, runtime: bool = True) -> Parts:
    """Check the settings, then read each artefact once: the network (on a new inference thread, unless
    ``runtime=False``), YuNet and the head model. Raises :class:`StartupError`."""
    problem = settings_problem(settings, runtime)
    if problem:
        raise StartupError(problem)
    engine, worker = None, None
    if runtime:
        worker = inference_thread()
        try:
            engine = worker.submit(load_engine, settings).result()
        except CheckpointError as exc:
            worker.shutdown(wait=False)
            variable = "LANDMARKS_ONNX_MODEL" if settings.runtime == "onnxruntime" else "LANDMARKS_CHECKPOINT"
            variable = "LANDMARKS_CONVENTION" if isinstance(exc, ConventionError) else variable
            raise StartupError(f"{variable}: {exc}") from exc
    try:
        detector = YuNetDetector.from_options(settings.pipeline_options().detector)
    except DetectorError as exc:
        raise StartupError(str(exc)) from exc
    try:
        head = None if settings.head_model is None else HeadModel.load(settings.head_model)
    except ValueError as exc:
        raise StartupError(f"LANDMARKS_HEAD_MODEL: {exc} (set it to none to serve without head pose)") from exc
    return Parts(engine, worker, detector, head)


def startup_problem(settings: Settings, runtime: bool = True) -> str | None:
    """:func:`load_parts` as a check (loads and drops everything): the one-line problem, or ``None``."""
    try:
        parts = load_parts(settings, runtime)
    except StartupError as exc:
        return str(exc)
    if parts.worker is not None:
        parts.worker.shutdown(wait=False)
    return None

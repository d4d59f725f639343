"""The two deployments: the model (the network, batching every ingress's faces) and the ingress (the service's
app around a remote model), and ``application``, what ``cluster/serve.yaml`` imports."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI
from pydantic import ValidationError
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle

from app.batcher import BatchInfo
from app.cluster.metrics import RayMetrics
from app.cluster.runner import RemoteRunner
from app.host import ModelHost, share_cores, warmup_sizes
from app.main import create_app
from app.metrics import (
    Metrics,
)
from app.service import LandmarkService
from app.settings import Settings
from app.startup import Parts, StartupError, load_parts
from model.engine import Crop, Engine, EngineCard, EngineOptions, Landmarks

log = logging.getLogger("app.cluster")

CONFIG = Path(__file__).resolve().parents[2] / "cluster" / "serve.yaml"
APP_NAME = "landmarks"


def cluster_settings() -> Settings:
    """``LANDMARKS_*`` from the replica's environment (the config's ``runtime_env``). The metrics port is Ray's
    (each node's metrics export port), so the service's own is off; ``LANDMARKS_WORKERS`` means nothing here."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise RuntimeError(f"invalid LANDMARKS_* settings: {exc}") from None
    return settings.model_copy(update={"metrics_port": None, "workers": 1})


def _face_count(requests: list[list[Crop]]) -> int:
    return sum(len(crops) for crops in requests)


@serve.deployment(name="LandmarkModel")
class LandmarkModel:
    """The network on one device, batching the crops of every ingress replica (one forward at a time, on the
    thread that loaded it: the same rule as the single-process batcher)."""

    def __init__(self) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = cluster_settings()
        share_cores(settings)
        try:
            self.host = ModelHost(load_parts(settings))  # each artefact once; the engine on the thread that runs it
        except StartupError as exc:
            raise RuntimeError(f"cannot start: {exc}") from None
        self.engine: Engine = self.host.engine
        self.host.warmup_now(warmup_sizes(settings))
        batching: Any = self.infer  # serve.batch's handle on this method (its limits come from the settings)
        batching.set_max_batch_size(settings.max_batch_size)
        batching.set_batch_wait_timeout_s(settings.max_wait_ms / 1000.0)
        self.metrics = RayMetrics()
        self.metrics.model_info.labels(
            self.engine.name, self.engine.version, self.engine.config.name, str(self.engine.device),
            self.engine.precision,
        ).set(1)  # fmt: skip
        log.info("model replica ready: %s %s on %s, %s", self.engine.name, self.engine.version, self.engine.device,
                 self.engine.precision)  # fmt: skip

    def describe(self) -> EngineCard:
        return self.host.card()

    @serve.batch(max_batch_size=EngineOptions.max_batch_size, batch_wait_timeout_s=0.0, batch_size_fn=_face_count)
    async def infer(self, requests: list[list[Crop]]) -> list[list[tuple[Landmarks, BatchInfo]]]:
        """Each call is one request's crops (at most the batch size); one forward runs them all."""
        crops = [crop for request in requests for crop in request]
        started = time.perf_counter()
        landmarks = await self.host.infer(crops)
        elapsed = time.perf_counter() - started
        self.metrics.observe_batch(len(crops), elapsed, ())
        info = BatchInfo(len(crops), 0.0, elapsed)
        answers, start = [], 0
        for request in requests:
            answers.append([(points, info) for points in landmarks[start : start + len(request)]])
            start += len(request)
        return answers

    def __del__(self) -> None:
        self.host.close()


async def remote_service(
    settings: Settings, metrics: Metrics, model: DeploymentHandle, parts: Parts
) -> LandmarkService:
    """The ingress's service: the model's card from a live model replica, the detector and head model here."""
    card: EngineCard = await model.describe.remote()
    runner = RemoteRunner(model, settings.max_batch_size)
    return LandmarkService(settings, card, runner, parts.detector, parts.head, metrics)


@serve.deployment(name="LandmarkIngress")
@serve.ingress()
class LandmarkIngress:
    """The single-process service's app, with the model deployment as its network."""

    def __init__(self, model: DeploymentHandle) -> None:
        self._model = model

    def __serve_build_asgi_app__(self) -> FastAPI:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        settings = cluster_settings()
        try:
            parts = load_parts(settings, runtime=False)  # no network here: the detector and the head model
        except StartupError as exc:
            raise RuntimeError(f"cannot start: {exc}") from None
        connect = functools.partial(remote_service, model=self._model, parts=parts)
        return create_app(settings, handle_signals=False, connect=connect, metrics=RayMetrics())


# cluster/serve.yaml's import_path (the decorators made both classes Deployments; mypy cannot see through them)
application = cast(Deployment, LandmarkIngress).bind(cast(Deployment, LandmarkModel).bind())

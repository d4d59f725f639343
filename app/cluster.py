"""The service on a Ray Serve cluster: the same FastAPI app, spread over hosts.

Two deployments (``cluster/serve.yaml`` sets their replicas, CPUs, GPUs and autoscaling):

- :class:`LandmarkIngress` serves the *same* app as ``dsc-landmarks-serve`` (routes, limits, API keys, errors,
  bodies): it decodes, detects and crops through the same :class:`model.pipeline.Pipeline`, and its runner,
  :class:`RemoteRunner`, sends each request's crops to the model deployment instead of a local batcher.
- :class:`LandmarkModel` owns the network and batches the faces of every ingress replica into one forward
  (Ray Serve's ``serve.batch``, up to ``LANDMARKS_MAX_BATCH_SIZE`` faces), on one inference thread.

A model replica that dies (its process or its node) costs no request: the ingress sends the crops again to a
live replica until the request's deadline, then answers ``503 model_unavailable`` with ``Retry-After``.

Start: ``python -m app.cluster --address HEAD:6379`` deploys ``cluster/serve.yaml`` on a running cluster and
waits until it is ready; without ``--address`` it starts a local one and serves until Ctrl-C. On a cluster
with Ray's dashboard, ``serve deploy cluster/serve.yaml`` takes the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import ray
import yaml
from fastapi import FastAPI
from pydantic import ValidationError
from ray import serve
from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError
from ray.serve import Deployment
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from ray.serve.schema import ServeDeploySchema
from ray.util import metrics as ray_metrics

from app.batcher import BatchInfo
from app.errors import ServiceError, deadline_exceeded, draining, unavailable
from app.host import ModelHost, share_cores, warmup_sizes
from app.main import create_app
from app.metrics import (
    LATENCY_BUCKETS,
    CounterMetric,
    GaugeMetric,
    HistogramMetric,
    Metrics,
)
from app.service import LandmarkService
from app.settings import Settings
from app.startup import Parts, StartupError, load_parts
from model.engine import Crop, Engine, EngineCard, EngineOptions, Landmarks

log = logging.getLogger("app.cluster")

CONFIG = Path(__file__).resolve().parents[1] / "cluster" / "serve.yaml"
APP_NAME = "landmarks"
# A dead replica or node: the crops go again to a live one (routing learns of the death within a second or two).
RETRYABLE = (
    RayActorError,
    WorkerCrashedError,
    NodeDiedError,
    ObjectLostError,
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
RETRY_BACKOFF_S = (0.05, 0.2, 0.5, 1.0)


def cluster_settings() -> Settings:
    """``LANDMARKS_*`` from the replica's environment (the config's ``runtime_env``). The metrics port is Ray's
    (each node's metrics export port), so the service's own is off; ``LANDMARKS_WORKERS`` means nothing here."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise RuntimeError(f"invalid LANDMARKS_* settings: {exc}") from None
    return settings.model_copy(update={"metrics_port": None, "workers": 1})


# --- metrics: the service's metrics, recorded through Ray (exported by every node's metrics agent) -------------


class _RayMetric:
    """A ``ray.util.metrics`` metric behind prometheus_client's calls (labels, observe, inc, dec, set)."""

    def __init__(self, metric: Any, keys: Sequence[str], values: Sequence[Any] = ()) -> None:
        self._metric = metric
        self._keys = tuple(keys)
        self._tags = {k: str(v) for k, v in zip(self._keys, values, strict=True)} if values else None
        self._level = 0.0

    def labels(self, *values: Any) -> _RayMetric:
        return _RayMetric(self._metric, self._keys, values)

    def observe(self, amount: float) -> None:
        self._metric.observe(amount, tags=self._tags)

    def inc(self, amount: float = 1) -> None:
        if isinstance(self._metric, ray_metrics.Gauge):
            self.set(self._level + amount)
        else:
            self._metric.inc(amount, tags=self._tags)

    def dec(self, amount: float = 1) -> None:
        self.set(self._level - amount)

    def set(self, value: float) -> None:
        self._level = value
        self._metric.set(value, tags=self._tags)


class RayMetrics(Metrics):
    """The service's metrics under the same names, exported by Ray with its ``ray_`` prefix (so
    ``ray_landmarks_request_duration_seconds``) and tagged by replica; the Grafana dashboard reads both."""

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float] = LATENCY_BUCKETS, labels: Sequence[str] = ()
    ) -> HistogramMetric:
        return _RayMetric(ray_metrics.Histogram(name, doc, list(buckets), tuple(labels)), labels)

    def gauge(self, name: str, doc: str, mode: str, labels: Sequence[str] = ()) -> GaugeMetric:
        return _RayMetric(ray_metrics.Gauge(name, doc, tuple(labels)), labels)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetric:
        return _RayMetric(ray_metrics.Counter(name, doc, tuple(labels)), labels)

    def render(self) -> bytes:
        raise ServiceError(404, "not_found", "on a Ray cluster, metrics are on each node's Ray metrics export port")


# --- the model deployment -------------------------------------------------------------------------------------


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


# --- the ingress ----------------------------------------------------------------------------------------------


class RemoteRunner:
    """The :class:`app.runners.FaceRunner` of a cluster's ingress: each request's crops (in chunks of at most the
    batch size) go to the model deployment, again to another replica when one dies, until the deadline."""

    def __init__(self, model: DeploymentHandle, max_batch_size: int) -> None:
        self._model = model
        self._chunk = max_batch_size
        self._closing = False

    def start(self) -> None:
        pass

    async def warmup(self, batch_sizes: list[int]) -> None:
        """The model replicas warm up before they take requests; this waits until one answers."""
        await self._model.describe.remote()

    async def submit(self, crops: Sequence[Crop], deadline: float) -> list[tuple[Landmarks, BatchInfo]]:
        if self._closing:
            raise draining()
        chunks = [list(crops[i : i + self._chunk]) for i in range(0, len(crops), self._chunk)]
        answers = await asyncio.gather(*(self._run(chunk, deadline) for chunk in chunks))
        return [answer for chunk in answers for answer in chunk]

    async def _run(self, crops: list[Crop], deadline: float) -> list[tuple[Landmarks, BatchInfo]]:
        loop = asyncio.get_running_loop()
        for attempt, backoff in enumerate((*RETRY_BACKOFF_S, None)):
            sent = loop.time()
            if sent >= deadline:
                raise deadline_exceeded()
            response = cast(DeploymentResponse, self._model.infer.remote(crops))  # a plain (not streaming) method
            try:
                answers: list[tuple[Landmarks, BatchInfo]] = await asyncio.wait_for(response, deadline - sent)
            except TimeoutError:
                response.cancel()
                raise deadline_exceeded() from None
            except RETRYABLE as exc:
                log.warning("model call failed (attempt %d): %s", attempt + 1, type(exc).__name__)
                if backoff is None or loop.time() + backoff >= deadline:
                    raise unavailable("model_unavailable", "no model replica could take these faces; retry") from None
                await asyncio.sleep(backoff)
                continue
            except RayTaskError as exc:  # the network itself failed: the same answer as the local batcher's
                log.error("model replica failed: %s", exc)
                raise ServiceError(500, "inference_failed", "inference failed on the model replica") from None
            waited = loop.time() - sent
            return [(p, BatchInfo(i.size, max(0.0, waited - i.inference_s), i.inference_s)) for p, i in answers]
        raise AssertionError("unreachable")

    async def drain(self, timeout_s: float) -> bool:
        """Nothing of this replica's own waits (the model deployment batches); refuse from now on."""
        self._closing = True
        return True


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


# --- the launcher ---------------------------------------------------------------------------------------------


def read_config(path: Path) -> ServeDeploySchema:
    """The Ray Serve config file, checked before anything connects to the cluster (a bad one: one message)."""
    try:
        return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        sys.exit(f"--config {path}: {exc}")


def deploy(schema: ServeDeploySchema, timeout_s: float) -> None:
    """What ``serve deploy`` does with the config file (without needing Ray's dashboard), then wait until the
    application is running (or say why not)."""
    from ray.serve._private import api as serve_api
    from ray.serve.config import ProxyLocation, gRPCOptions

    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=ProxyLocation(schema.proxy_location),
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
    )
    client.deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(APP_NAME)
        state = status.status if status is not None else "NOT_STARTED"
        if state == "RUNNING":
            return
        if state in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
            message = status.message if status is not None else ""
            sys.exit(f"{APP_NAME}: {state} after {timeout_s:.0f} s{': ' + message if message else ''}")
        time.sleep(0.5)


def auth_problem(env: Mapping[str, str], address: str | None, insecure: bool) -> str | None:
    """Why this process must not join the cluster: token authentication off for a running cluster, without
    ``--insecure-no-auth`` (a Ray cluster without it runs any code anyone who reaches its ports sends)."""
    if address is None or insecure or env.get("RAY_AUTH_MODE") == "token":
        return None
    return (
        "Ray token authentication is off: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) on "
        "every node and here (README: Scaling out), or pass --insecure-no-auth"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="deploy the landmark service on a Ray Serve cluster")
    parser.add_argument("--address", help="a running cluster's GCS address (HEAD:6379); default: start a local one")
    parser.add_argument("--node-ip", help="this machine's address in the cluster (default: Ray's guess)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="Ray Serve config file (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait until the app is running")
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="connect to a cluster without Ray's token authentication (anyone who reaches its ports runs code)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    schema = read_config(args.config)
    problem = auth_problem(os.environ, args.address, args.insecure_no_auth)
    if problem:
        sys.exit(problem)
    if args.address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # a local cluster makes its own token (~/.ray/auth_token)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local cluster would otherwise report usage outside
    ray.init(address=args.address, _node_ip_address=args.node_ip, namespace="serve", logging_level=logging.WARNING)
    deploy(schema, args.timeout)
    print(f"{APP_NAME} running on http://{schema.http_options.host}:{schema.http_options.port}", flush=True)
    if args.address is None:  # the local cluster lives as long as this process
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(3600)
        except (KeyboardInterrupt, SystemExit):
            serve.shutdown()


if __name__ == "__main__":
    main()

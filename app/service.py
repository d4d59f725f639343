"""One process's service: decode the upload, run the :class:`model.pipeline.Pipeline` with a
:class:`app.runners.FaceRunner` as its network, answer; plus the lifecycle (warm-up, ready, drain) and the
pre-processing pool.

The runner is where crops go: :class:`app.runners.LocalRunner` (this process's batcher in front of its model
host) or, on a Ray Serve cluster, :class:`app.cluster.RemoteRunner` (a model deployment that batches faces from
every ingress)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.batcher import BatchInfo
from app.errors import ServiceError
from app.host import ModelHost, warmup_sizes
from app.imaging import PixelBudget, decode_image
from app.lifecycle import Lifecycle
from app.memory import malloc_trim, return_memory_when_idle
from app.metrics import Metrics
from app.responses import Prediction
from app.runners import FaceRunner, LocalRunner
from app.settings import Settings
from app.startup import Parts, load_parts
from model.engine import Crop, EngineInfo, Image, Landmarks
from model.geometry import Box
from model.pipeline import Detector, Pipeline, Steps, box_problem, caller_faces, drive_async
from model.pose import HeadModel
from model.tracking import Tracker

log = logging.getLogger("app")

T = TypeVar("T")


class LandmarkService:
    """HTTP lifecycle for one process: the :class:`model.pipeline.Pipeline` runs each request, its ``infer`` is the
    runner (the local batcher, or a cluster's model deployment), its CPU steps run in a pre-processing pool.
    ``engine`` describes the served model (its card)."""

    def __init__(
        self,
        settings: Settings,
        engine: EngineInfo,
        runner: FaceRunner,
        detector: Detector,
        head: HeadModel | None,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.runner = runner
        self.metrics = metrics
        self.pipeline = Pipeline(settings.pipeline_options(), engine.config.input_size, detector, head)
        self._pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="preprocess")
        self.lifecycle = Lifecycle()
        self.pixels = PixelBudget(settings.max_pixels_in_flight)
        self._trimmer: asyncio.Task[None] | None = None
        self.streams = 0  # open /landmarks/stream connections

    async def start(self) -> None:
        """Start the runner and warm the model up (on its own thread); then report ready."""
        self.runner.start()
        began = time.perf_counter()
        await self.runner.warmup(warmup_sizes(self.settings))
        trim = malloc_trim()
        if trim is not None:
            await asyncio.to_thread(trim)  # what loading and warming up freed; the loop keeps answering probes
        if self.lifecycle.mark_ready():
            self.metrics.ready.set(1)
            log.info("process %d ready (warm-up %.1f s)", os.getpid(), time.perf_counter() - began)
            if trim is not None:
                self._trimmer = asyncio.create_task(return_memory_when_idle(self.lifecycle, trim))

    def begin_drain(self) -> None:
        """Turn not-ready and refuse new requests from this instant (SIGTERM); :meth:`stop` finishes the drain."""
        self.lifecycle.begin_drain()
        self.metrics.ready.set(0)

    async def stop(self) -> bool:
        """Refuse new requests, let every accepted one finish (within the drain timeout), release the threads.

        Accepted requests keep the runner and the pre-processing pool until they have their answer (a detected
        face's second pass submits after the first), so those close only once the requests are done.
        """
        self.begin_drain()
        if self._trimmer is not None:
            self._trimmer.cancel()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        idle = await self.lifecycle.wait_idle(deadline)
        finished = await self.runner.drain(max(0.0, deadline - time.monotonic())) and idle
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.lifecycle.close()
        return finished

    @property
    def ready(self) -> bool:
        return self.lifecycle.ready

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def landmarks(
        self, data: bytes, boxes: list[Box] | None, max_faces: int, deadline: float, passes: int | None = None
    ) -> Prediction:
        """One uploaded image through the pipeline (the route has accepted the request already); ``passes``
        per face (default: the pipeline's, :meth:`model.pipeline.Pipeline.passes_for`)."""

        def steps(image: Image) -> Steps:
            if boxes is not None:
                check_boxes(boxes, image.shape[1], image.shape[0])
            faces = None if boxes is None else caller_faces(boxes)
            return self.pipeline.steps(image, faces, max_faces, passes=passes)

        return await self._serve(data, steps, deadline)

    async def frame(self, data: bytes, tracker: Tracker, deadline: float) -> Prediction:
        """One video frame of a stream through its tracker (:mod:`model.tracking`), as :meth:`landmarks`."""
        return await self._serve(data, tracker.steps, deadline)

    async def _serve(self, data: bytes, steps: Callable[[Image], Steps], deadline: float) -> Prediction:
        """Decode ``data`` (holding its pixels against ``LANDMARKS_MAX_PIXELS_IN_FLIGHT`` until it is done) and
        drive its steps with the runner as the network."""
        with self.pixels.hold() as reserve:
            t0 = time.perf_counter()
            image = await self._off_loop(lambda: decode_image(data, self.settings.max_image_pixels, reserve))
            decode_ms = 1000 * (time.perf_counter() - t0)
            infos: list[BatchInfo] = []

            async def infer(crops: list[Crop]) -> list[Landmarks]:
                served = await self.runner.submit(crops, deadline)
                infos.extend(info for _, info in served)
                return [landmarks for landmarks, _ in served]

            result = await drive_async(steps(image), infer, self._off_loop)
        timings = {"decode": decode_ms, "crop": 0.0, **result.timings_ms}
        timings["queue_wait"] = 1000 * max((i.queue_wait_s for i in infos), default=0.0)
        timings["inference"] = 1000 * max((i.inference_s for i in infos), default=0.0)
        timings["total"] = 1000 * (time.perf_counter() - t0)
        self.metrics.faces.inc(len(result.faces))
        return Prediction(image, result.faces, {k: round(v, 3) for k, v in timings.items()}, [i.size for i in infos])


ServiceFactory = Callable[[Settings, Metrics], Awaitable[LandmarkService]]


async def load_service(settings: Settings, metrics: Metrics, parts: Parts | None = None) -> LandmarkService:
    """The service around ``parts`` (what the server path loaded and checked before serving), or around parts
    loaded now (each artefact once; the engine on the inference thread that will run it)."""
    if parts is None:
        parts = await asyncio.get_running_loop().run_in_executor(None, load_parts, settings)
    host = ModelHost(parts)
    return LandmarkService(settings, host.engine, LocalRunner(host, settings, metrics), parts.detector, parts.head,
                           metrics)  # fmt: skip


def check_boxes(boxes: list[Box], width: int, height: int) -> None:
    """Caller boxes must be finite, non-degenerate and overlap the image (else 400 ``invalid_boxes``)."""
    problem = box_problem(boxes, width, height)
    if problem:
        raise ServiceError(400, "invalid_boxes", problem)

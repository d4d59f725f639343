"""The request pipeline: decode -> detect (or caller boxes) -> affine crop -> batcher -> inverse map -> faces."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from app.batcher import Batcher, BatchInfo, inference_thread
from app.errors import ServiceError
from app.imaging import PixelBudget, decode_image
from app.lifecycle import Lifecycle
from app.memory import malloc_trim, return_memory_when_idle
from app.metrics import Metrics
from app.predictor import CropJob, FaceResult, Predictor
from app.settings import Settings
from model.detector import Detection, YuNetDetector
from model.geometry import Box
from model.pipeline import Framing, face_crop, refine

log = logging.getLogger("app")

T = TypeVar("T")


@dataclass
class FaceOut:
    box: Box
    detection_score: float | None
    points: NDArray[np.float64]
    confidence: NDArray[np.float64]


@dataclass
class Prediction:
    """Everything a route needs to answer: the decoded image (for rendering), faces, timings and batch sizes."""

    image: NDArray[np.uint8]
    faces: list[FaceOut]
    timings_ms: dict[str, float]
    batch_sizes: list[int] = field(default_factory=list)


class LandmarkService:
    """Owns the predictor, the detector, the batcher and the pre-processing pool for one process."""

    def __init__(
        self,
        settings: Settings,
        predictor: Predictor,
        detector: Callable[[NDArray[np.uint8]], list[Detection]],
        metrics: Metrics,
        worker: ThreadPoolExecutor | None = None,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.detector = detector
        self.metrics = metrics
        self.batcher: Batcher[CropJob, FaceResult] = Batcher(
            predictor.run_batch,
            settings.max_batch_size,
            settings.max_wait_ms / 1000.0,
            settings.queue_size,
            on_batch=metrics.observe_batch,
            worker=worker,
            on_depth=metrics.queue_depth.set,
        )
        self._pool = ThreadPoolExecutor(settings.preprocess_threads, thread_name_prefix="preprocess")
        self.lifecycle = Lifecycle()
        self.pixels = PixelBudget(settings.max_pixels_in_flight)
        self._trimmer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the batcher and warm the model up on its own thread; then report ready."""
        self.batcher.start()
        began = time.perf_counter()
        sizes = [1, self.settings.max_batch_size][: self.settings.warmup_batches]
        if sizes:
            await self.batcher.call_in_worker(lambda: self.predictor.warmup(sizes))
        trim = malloc_trim()
        if trim is not None:
            await asyncio.to_thread(trim)  # what loading and warming up freed; the loop keeps answering probes
        if self.lifecycle.state == "starting":
            self.lifecycle.state = "ready"
            self.metrics.ready.set(1)
            log.info("process %d ready (warm-up %.1f s)", os.getpid(), time.perf_counter() - began)
            if trim is not None:
                self._trimmer = asyncio.create_task(return_memory_when_idle(self.lifecycle, trim))

    async def stop(self) -> bool:
        """Refuse new requests, let every accepted one finish (within the drain timeout), release the threads.

        Accepted requests keep the batcher and the pre-processing pool until they have their answer (a detected
        face's second pass submits after the first), so those close only once the requests are done.
        """
        self.lifecycle.state = "draining"
        self.metrics.ready.set(0)
        if self._trimmer is not None:
            self._trimmer.cancel()
        deadline = time.monotonic() + self.settings.drain_timeout_s
        idle = await self.lifecycle.wait_idle(deadline)
        finished = await self.batcher.drain(max(0.0, deadline - time.monotonic())) and idle
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.lifecycle.state = "closed"
        return finished

    @property
    def ready(self) -> bool:
        return self.lifecycle.ready

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _crop(self, image: NDArray[np.uint8], framing: Framing) -> CropJob:
        crop, inverse = face_crop(image, framing, self.predictor.input_size)
        return CropJob(crop, inverse)

    async def _landmarks(
        self, image: NDArray[np.uint8], framings: list[Framing], deadline: float
    ) -> tuple[list[FaceResult], list[BatchInfo], float]:
        start = time.perf_counter()
        jobs = await self._off_loop(lambda: [self._crop(image, f) for f in framings])
        crop_ms = 1000 * (time.perf_counter() - start)
        served = await self.batcher.submit(jobs, deadline)
        return [r for r, _ in served], [info for _, info in served], crop_ms

    async def predict(self, data: bytes, boxes: list[Box] | None, max_faces: int, deadline: float) -> Prediction:
        """Run the whole pipeline for one uploaded image (the route has accepted the request already), holding
        its decoded pixels against ``LANDMARKS_MAX_PIXELS_IN_FLIGHT`` until it is done."""
        with self.pixels.hold() as reserve:
            return await self._predict(data, boxes, max_faces, deadline, reserve)

    async def _predict(
        self,
        data: bytes,
        boxes: list[Box] | None,
        max_faces: int,
        deadline: float,
        reserve: Callable[[int], None],
    ) -> Prediction:
        t0 = time.perf_counter()
        image = await self._off_loop(lambda: decode_image(data, self.settings.max_image_pixels, reserve))
        timings = {"decode": 1000 * (time.perf_counter() - t0)}
        scores: list[float | None]
        if boxes is None:
            t1 = time.perf_counter()
            detections = (await self._off_loop(lambda: self.detector(image)))[:max_faces]
            timings["detect"] = 1000 * (time.perf_counter() - t1)
            framings = [Framing(d.box) for d in detections]
            scores = [d.score for d in detections]
        else:
            check_boxes(boxes, image.shape[1], image.shape[0])
            framings = [Framing(b) for b in boxes]
            scores = [None] * len(boxes)
        faces: list[FaceOut] = []
        infos: list[BatchInfo] = []
        timings["crop"] = 0.0
        if framings:
            results, infos, crop_ms = await self._landmarks(image, framings, deadline)
            timings["crop"] = crop_ms
            if self.settings.second_pass and scores and scores[0] is not None:
                framings = [refine(r.points, aligned=False) for r in results]
                results, more, crop_ms = await self._landmarks(image, framings, deadline)
                infos += more
                timings["crop"] += crop_ms
            faces = [
                FaceOut(f.box, s, r.points, r.confidence) for f, s, r in zip(framings, scores, results, strict=True)
            ]
        timings["queue_wait"] = 1000 * max((i.queue_wait_s for i in infos), default=0.0)
        timings["inference"] = 1000 * max((i.inference_s for i in infos), default=0.0)
        timings["total"] = 1000 * (time.perf_counter() - t0)
        self.metrics.faces.inc(len(faces))
        return Prediction(image, faces, {k: round(v, 3) for k, v in timings.items()}, [i.size for i in infos])


async def load_service(settings: Settings, metrics: Metrics) -> LandmarkService:
    """Load the checkpoint on the inference thread (where it will run) and build the service around it."""
    worker = inference_thread()
    load = functools.partial(
        Predictor.load,
        str(settings.checkpoint),
        settings.device,
        settings.precision,
        settings.flip_test,
        settings.cuda_graphs,
        settings.max_batch_size,
        settings.network_stand_in,
    )
    predictor = await asyncio.get_running_loop().run_in_executor(worker, load)
    return LandmarkService(settings, predictor, build_detector(settings), metrics, worker)


def build_detector(settings: Settings) -> YuNetDetector:
    """YuNet with the ``LANDMARKS_DETECTOR_*`` settings (loads and checks the model file now, not per request)."""
    return YuNetDetector(
        max_side=settings.detector_max_side,
        score_threshold=settings.detector_score_threshold,
        nms_threshold=settings.detector_nms_threshold,
        min_face_px=settings.detector_min_face_px,
    )


MAX_BOX_FACTOR = 4  # a face box may overhang the photo (a tight close-up), not dwarf it


def check_boxes(boxes: list[Box], width: int, height: int) -> None:
    """Caller boxes must be finite, non-degenerate and overlap the image (else 400)."""
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not all(np.isfinite(v) for v in (x1, y1, x2, y2)):
            raise ServiceError(400, "invalid_boxes", f"box {i} has a non-finite coordinate")
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise ServiceError(400, "invalid_boxes", f"box {i} must have x2 > x1 and y2 > y1 (at least 1 px)")
        if x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
            raise ServiceError(400, "invalid_boxes", f"box {i} lies outside the {width}x{height} image")
        if max(x2 - x1, y2 - y1) > MAX_BOX_FACTOR * max(width, height):
            raise ServiceError(
                400, "invalid_boxes", f"box {i} is more than {MAX_BOX_FACTOR}x the size of the {width}x{height} image"
            )

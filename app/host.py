"""The model host: the network on its one inference thread, and what every process that holds it does the same way
— share the cores, warm up, run a forward, describe the model. This process's batcher
(:class:`app.runners.LocalRunner`) and the Ray model deployment (:class:`app.cluster.LandmarkModel`) each hold
one."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import cv2

from app.settings import Settings
from app.startup import Parts
from model.engine import Crop, Engine, EngineCard, Landmarks


def share_cores(settings: Settings) -> None:
    """Thread pools inside torch and OpenCV: one process may use every core; LANDMARKS_WORKERS processes share
    them (each one's pools default to cores / workers, so 16 workers do not start 16 x 16 spinning threads)."""
    share = settings.core_share()
    if settings.runtime == "torch" and (settings.torch_threads or settings.workers > 1):
        import torch  # the onnxruntime service has no torch; ONNX Runtime's threads are set on its session

        torch.set_num_threads(settings.torch_threads or share)
    cv2.setNumThreads(settings.opencv_threads or share)


def warmup_sizes(settings: Settings) -> list[int]:
    """The batch sizes warmed up before a host reports ready (``LANDMARKS_WARMUP_BATCHES`` of one, then the most)."""
    return [1, settings.max_batch_size][: settings.warmup_batches]


class ModelHost:
    """An engine and the one thread that loaded it and runs it (loaded by :func:`app.startup.load_parts`)."""

    def __init__(self, parts: Parts) -> None:
        if parts.engine is None or parts.worker is None:
            raise ValueError("a model host needs parts loaded with their engine (runtime=True)")
        self.engine: Engine = parts.engine
        self.worker: ThreadPoolExecutor = parts.worker

    async def warmup(self, sizes: list[int]) -> None:
        """One forward per batch size on the inference thread (CUDA graphs are captured here, on CUDA)."""
        if sizes:
            await asyncio.get_running_loop().run_in_executor(self.worker, self.engine.warmup, sizes)

    def warmup_now(self, sizes: list[int]) -> None:
        """:meth:`warmup` for a constructor that may not run an event loop (a Ray replica's)."""
        if sizes:
            self.worker.submit(self.engine.warmup, sizes).result()

    async def infer(self, crops: list[Crop]) -> list[Landmarks]:
        """One forward on the inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, self.engine.infer, crops)

    def card(self) -> EngineCard:
        return EngineCard.of(self.engine)

    def close(self) -> None:
        self.worker.shutdown(wait=False)

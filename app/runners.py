"""Where the service's crops go: the :class:`FaceRunner` contract and this process's :class:`LocalRunner` (the
batcher in front of the model host). A Ray Serve cluster's ingress uses :class:`app.cluster.RemoteRunner`, kept
with the cluster so that the single-process service never imports Ray."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

from app.batcher import Batcher, BatchInfo
from app.host import ModelHost
from app.metrics import Metrics
from app.settings import Settings
from model.engine import Crop, Landmarks


class FaceRunner(Protocol):
    """Runs the pipeline's crops for the service: started once, warmed up, then ``submit`` per request until the
    drain. ``submit`` answers each crop's landmarks and how it was batched, or raises a :class:`ServiceError`
    (503 full or draining, 504 past ``deadline``, a ``loop.time()`` instant)."""

    def start(self) -> None: ...
    def warmup(self, batch_sizes: list[int]) -> Awaitable[None]: ...
    def submit(self, crops: Sequence[Crop], deadline: float) -> Awaitable[list[tuple[Landmarks, BatchInfo]]]: ...
    def drain(self, timeout_s: float) -> Awaitable[bool]: ...


class LocalRunner:
    """This process's runner: the batcher in front of the model host (the engine on the thread that loaded it)."""

    def __init__(self, host: ModelHost, settings: Settings, metrics: Metrics) -> None:
        self.host = host
        self.batcher: Batcher[Crop, Landmarks] = Batcher(
            host.engine.infer,
            settings.max_batch_size,
            settings.max_wait_ms / 1000.0,
            settings.queue_size,
            on_batch=metrics.observe_batch,
            worker=host.worker,
            on_depth=metrics.queue_depth.set,
        )

    def start(self) -> None:
        self.batcher.start()

    async def warmup(self, batch_sizes: list[int]) -> None:
        await self.host.warmup(batch_sizes)

    def submit(self, crops: Sequence[Crop], deadline: float) -> Awaitable[list[tuple[Landmarks, BatchInfo]]]:
        return self.batcher.submit(crops, deadline)

    def drain(self, timeout_s: float) -> Awaitable[bool]:
        return self.batcher.drain(timeout_s)

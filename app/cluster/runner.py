"""The ingress's runner: each request's crops go to the model deployment, again to a live replica when one dies."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from app.batcher import BatchInfo
from app.errors import ServiceError, deadline_exceeded, draining, unavailable
from model.engine import Crop, Landmarks

log = logging.getLogger("app.cluster")

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

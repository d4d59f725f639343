"""The service's one lifecycle: starting -> ready -> draining -> closed, and the requests it has accepted.

Every refusal for the state (``503 not_ready`` / ``503 draining``) is built here. A request is *accepted* when it
enters :meth:`Lifecycle.accept` while the service is ready; from then on it runs to its answer even if SIGTERM
arrives: :meth:`Lifecycle.wait_idle` lets the drain wait for every accepted request (decode, detection, crop and
both passes), not only for the faces already queued at the batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal

from app.errors import ServiceError, draining, not_ready

State = Literal["starting", "ready", "draining", "closed"]


class Lifecycle:
    def __init__(self) -> None:
        self.state: State = "starting"
        self.in_flight = 0
        self.finished = 0  # accepted requests that have their answer
        self.last_finished = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = asyncio.Event()  # long-lived connections (video streams) wait on it to close

    def mark_ready(self) -> bool:
        """starting -> ready (once warmed up); False when a drain began first."""
        if self.state != "starting":
            return False
        self.state = "ready"
        return True

    def begin_drain(self) -> bool:
        """Refuse new requests from this instant; False when already draining or closed."""
        if self.draining:
            return False
        self.state = "draining"
        self._draining.set()
        return True

    async def wait_draining(self) -> None:
        """Return once a drain has begun (what a video stream waits on to close with 1001)."""
        await self._draining.wait()

    def close(self) -> None:
        self.state = "closed"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def draining(self) -> bool:
        return self.state in ("draining", "closed")

    def refusal(self) -> ServiceError:
        """The 503 for a request that arrives while the service is not ready."""
        return draining() if self.draining else not_ready()

    def check_ready(self) -> None:
        if not self.ready:
            raise self.refusal()

    @contextlib.asynccontextmanager
    async def accept(self) -> AsyncIterator[None]:
        """Admit a request (503 unless ready) and count it until it has its answer."""
        self.check_ready()
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.finished += 1
            self.last_finished = time.monotonic()
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, deadline: float) -> bool:
        """Wait until no accepted request is left or ``time.monotonic()`` passes ``deadline``; True when idle."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
        return self.in_flight == 0

"""FastAPI dependencies: the metrics and the service, taken from the app that owns them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import not_ready
from app.metrics import Metrics
from app.service import LandmarkService


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_service(request: Request) -> LandmarkService:
    service: LandmarkService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise not_ready()
    return service


MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServiceDep = Annotated[LandmarkService, Depends(get_service)]

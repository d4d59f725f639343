"""FastAPI dependencies: the settings, the metrics and the service, taken from the app that owns them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import not_ready
from app.metrics import Metrics
from app.service import LandmarkService
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_service(request: Request) -> LandmarkService:
    service: LandmarkService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise not_ready()
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServiceDep = Annotated[LandmarkService, Depends(get_service)]

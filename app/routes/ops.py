"""Health, model card and Prometheus metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import MetricsDep, ServiceDep
from app.errors import ServiceError
from app.schemas import ErrorResponse, Health, ModelCard

router = APIRouter(tags=["operations"])

LICENCE = (
    "weights trained on AFLW2000-3D and 300-W (HELEN, AFW): research and non-commercial use only (see README); "
    "code: MIT"
)
DEMO_PAGE = Path(__file__).resolve().parents[1] / "static" / "demo.html"


@router.get("/", include_in_schema=False)
async def demo() -> HTMLResponse:
    """A page to try the service: drop a photo, see every face's landmarks drawn, coloured by confidence."""
    return HTMLResponse(DEMO_PAGE.read_text(encoding="utf-8"))


@router.get("/health/live", response_model=Health, summary="the process is up")
async def live() -> Health:
    return Health(status="alive")


def unavailable(description: str) -> dict[int | str, dict[str, Any]]:
    return {503: {"model": ErrorResponse, "description": description}}


@router.get(
    "/health/ready",
    response_model=Health,
    summary="the model is loaded and warmed up, not draining",
    responses=unavailable("loading, warming up or draining"),
)
async def ready(service: ServiceDep) -> Health:
    service.lifecycle.check_ready()  # 503 not_ready / draining
    return Health(status="ready")


@router.get(
    "/v1/model",
    response_model=ModelCard,
    summary="the served model and where it came from",
    responses=unavailable("the model is not loaded yet"),
)
async def model_card(service: ServiceDep) -> ModelCard:
    engine = service.engine
    meta = engine.metadata
    return ModelCard(
        name=engine.name,
        version=engine.version,
        preset=engine.config.name,
        input_size=engine.config.input_size,
        heatmap_size=engine.config.heatmap_size,
        num_landmarks=engine.config.num_landmarks,
        device=str(engine.device),
        precision=engine.precision,
        training=meta.get("training", {}),
        metrics=meta.get("metrics", {}),
        licence=LICENCE,
    )


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
)
async def metrics(m: MetricsDep, request: Request) -> Response:
    if request.app.state.settings.metrics_port is not None:  # served on the internal port only
        raise ServiceError(404, "not_found", "Not Found")
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)

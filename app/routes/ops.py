"""Health, model card and Prometheus metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

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


def get_when_ready(path: str, model: type[BaseModel], summary: str, unavailable_while: str) -> Any:
    """``router.get`` for a route that answers 503 (an :class:`ErrorResponse`) while ``unavailable_while``, as
    its OpenAPI entry says."""
    responses: dict[int | str, dict[str, Any]] = {503: {"model": ErrorResponse, "description": unavailable_while}}
    return router.get(path, response_model=model, summary=summary, responses=responses)


@get_when_ready("/health/ready", Health, "the model is loaded and warmed up, not draining",
                "loading, warming up or draining")  # fmt: skip
async def ready(service: ServiceDep) -> Health:
    service.lifecycle.check_ready()  # 503 not_ready / draining
    return Health(status="ready")


@get_when_ready("/v1/model", ModelCard, "the served model and where it came from", "the model is not loaded yet")
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
        convention=engine.convention_name,
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

"""POST /landmarks and POST /landmarks/render."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response

from app.deps import ServiceDep
from app.errors import ServiceError, deadline_exceeded
from app.forms import parse_boxes, parse_max_faces, parse_multipart, parse_passes, read_body, text_field
from app.responses import Prediction, render_png, to_response
from app.schemas import ErrorResponse, LandmarksResponse
from app.service import LandmarkService
from model.pipeline import MAX_PASSES

router = APIRouter(tags=["landmarks"])

FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "JPEG, PNG, WebP or BMP, recognised from its bytes; EXIF "
                            "orientation is applied",
                        },
                        "boxes": {
                            "type": "string",
                            "example": "[[120, 80, 330, 310]]",
                            "description": "optional JSON array of [x1, y1, x2, y2] pixel boxes, each the "
                            "tight box around one face's 68 points; skips detection and "
                            "returns one face per box, in order. A box from another face detector (dlib, "
                            "MediaPipe, ...) is re-framed from the first pass's landmarks by a second pass",
                        },
                        "max_faces": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "most faces to return (default and upper limit: LANDMARKS_MAX_FACES)",
                        },
                        "passes": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PASSES,
                            "description": "network passes per face (default: LANDMARKS_PASSES, 2, for detected "
                            "faces; for `boxes`, 1, and 2 where a box does not fit its face's landmarks, as "
                            "another detector's box does not): each after the first re-crops the face from the "
                            "previous pass's landmarks; 3 serves the mean of the three (more accurate on turned "
                            "faces, about 1.4x the time)",
                        },
                    },
                }
            }
        },
    }
}


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("malformed `boxes`, `max_faces` or `passes`, or a malformed multipart body"),
    413: _error("request body over LANDMARKS_MAX_UPLOAD_BYTES (refused before it is read)"),
    415: _error("the bytes are not a decodable JPEG, PNG, WebP or BMP image"),
    422: _error("no `image` field, or the image exceeds LANDMARKS_MAX_IMAGE_PIXELS (checked from its header)"),
    503: _error("queue full, decoded-pixel budget busy, model not ready, or server draining; see Retry-After"),
    504: _error("the request passed LANDMARKS_REQUEST_TIMEOUT_S"),
}


async def run_request(request: Request, service: LandmarkService) -> Prediction:
    """Read the form, validate it and run the pipeline; the deadline covers all of it, body upload included."""
    settings = service.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout_s
    try:
        async with service.lifecycle.accept(), asyncio.timeout_at(deadline):
            prediction = await _run(request, service, deadline)
    except TimeoutError:
        raise deadline_exceeded() from None
    request.state.faces = len(prediction.faces)
    request.state.batch_sizes = prediction.batch_sizes
    return prediction


async def _run(request: Request, service: LandmarkService, deadline: float) -> Prediction:
    settings = service.settings
    body = await read_body(request, settings.max_upload_bytes)
    form = parse_multipart(body, request.headers.get("content-type", ""))
    image = form.get("image")
    if image is None or not image.data:
        raise ServiceError(422, "validation_error", "the form field `image` is missing or empty", reason="validation")
    max_faces = parse_max_faces(
        text_field(form["max_faces"].data, "max_faces") if "max_faces" in form else None, settings.max_faces
    )
    boxes = parse_boxes(text_field(form["boxes"].data, "boxes") if "boxes" in form else None, max_faces)
    passes = parse_passes(text_field(form["passes"].data, "passes") if "passes" in form else None)
    return await service.landmarks(bytes(image.data), boxes, max_faces, deadline, passes)


@router.post(
    "/landmarks",
    response_model=LandmarksResponse,
    responses=ERRORS,
    openapi_extra=FORM_SCHEMA,
    summary="68 facial landmarks with per-point confidence for every face in an image",
)
async def landmarks(request: Request, service: ServiceDep) -> LandmarksResponse:
    return to_response(await run_request(request, service), service.engine)


@router.post(
    "/landmarks/render",
    response_class=Response,
    openapi_extra=FORM_SCHEMA,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "the image with landmarks drawn, coloured by confidence (red 0 -> green 1)",
        },
        **ERRORS,
    },
    summary="the same pipeline, answered with a PNG picture of the result",
)
async def render(request: Request, service: ServiceDep) -> Response:
    prediction = await run_request(request, service)
    png = await asyncio.get_running_loop().run_in_executor(None, render_png, prediction)
    return Response(png, media_type="image/png")

"""POST /landmarks and POST /landmarks/render."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from app.deps import ServiceDep
from app.errors import ServiceError
from app.forms import parse_multipart, read_body
from app.imaging import encode_png
from app.schemas import ErrorResponse, Face, ImageInfo, LandmarksResponse, ModelInfo
from app.service import Box, LandmarkService, Prediction
from model.render import draw_landmarks

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
                            "returns one face per box, in order",
                        },
                        "max_faces": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "most faces to return (default and upper limit: LANDMARKS_MAX_FACES)",
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
    400: _error("malformed `boxes` or `max_faces`, or a malformed multipart body"),
    413: _error("request body over LANDMARKS_MAX_UPLOAD_BYTES (refused before it is read)"),
    415: _error("the bytes are not a decodable JPEG, PNG, WebP or BMP image"),
    422: _error("no `image` field, or the image exceeds LANDMARKS_MAX_IMAGE_PIXELS (checked from its header)"),
    503: _error("queue full, decoded-pixel budget busy, model not ready, or server draining; see Retry-After"),
    504: _error("the request passed LANDMARKS_REQUEST_TIMEOUT_S"),
}


MAX_BOXES_TEXT = 16_384  # characters: 100 boxes of four long numbers fit many times over
MAX_COORDINATE = 1e6  # pixels; farther is no face of any photo under the pixel limit


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def parse_boxes(raw: str | None, max_faces: int) -> list[Box] | None:
    """The one parser of `boxes`: bounded in length, nesting (through length) and magnitude; every failure is 400."""
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > MAX_BOXES_TEXT:
        raise ServiceError(400, "invalid_boxes", f"`boxes` is longer than {MAX_BOXES_TEXT} characters")
    try:  # integers parse as floats (no huge-int arithmetic); NaN and Infinity are refused
        value = json.loads(raw, parse_int=float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ServiceError(400, "invalid_boxes", f"`boxes` is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ServiceError(400, "invalid_boxes", f"`boxes` is not valid JSON: {detail}") from None
    if not isinstance(value, list) or not all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, float) for v in b) for b in value
    ):
        raise ServiceError(400, "invalid_boxes", "`boxes` must be a JSON array of [x1, y1, x2, y2] number arrays")
    if len(value) > max_faces:
        raise ServiceError(400, "invalid_boxes", f"{len(value)} boxes given; max_faces is {max_faces}")
    if not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for b in value for v in b):
        raise ServiceError(
            400, "invalid_boxes", f"box coordinates must be finite numbers within ±{MAX_COORDINATE:.0f} pixels"
        )
    return [(b[0], b[1], b[2], b[3]) for b in value]


def parse_max_faces(raw: str | None, limit: int) -> int:
    if raw is None or raw.strip() == "":
        return limit
    try:
        value = int(raw.strip())
    except ValueError:
        raise ServiceError(400, "invalid_max_faces", "`max_faces` must be an integer") from None
    if not 1 <= value <= limit:
        raise ServiceError(400, "invalid_max_faces", f"`max_faces` must be between 1 and {limit}")
    return value


def _text(part_data: bytearray, field: str) -> str:
    try:
        return part_data.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError(400, f"invalid_{field}", f"`{field}` is not UTF-8 text") from None


async def run_request(request: Request, service: LandmarkService) -> Prediction:
    """Read the form, validate it and run the pipeline; the deadline covers all of it, body upload included."""
    settings = service.settings
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.request_timeout_s
    try:
        async with service.lifecycle.accept(), asyncio.timeout_at(deadline):
            prediction = await _run(request, service, deadline)
    except TimeoutError:
        raise ServiceError(504, "deadline_exceeded", "the request passed its deadline", reason="timeout") from None
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
        _text(form["max_faces"].data, "max_faces") if "max_faces" in form else None, settings.max_faces
    )
    boxes = parse_boxes(_text(form["boxes"].data, "boxes") if "boxes" in form else None, max_faces)
    return await service.predict(bytes(image.data), boxes, max_faces, deadline)


def to_response(prediction: Prediction, service: LandmarkService) -> LandmarksResponse:
    engine = service.predictor.engine
    meta = engine.metadata
    faces = [
        Face(
            box=[round(float(v), 3) for v in f.box],
            detection_score=None if f.detection_score is None else round(f.detection_score, 4),
            landmarks=np.round(f.points, 3).tolist(),
            confidence=np.round(f.confidence, 4).tolist(),
            score=round(float(np.mean(f.confidence)), 4),
        )
        for f in prediction.faces
    ]
    height, width = prediction.image.shape[:2]
    return LandmarksResponse(
        image=ImageInfo(width=width, height=height),
        faces=faces,
        model=ModelInfo(
            name=str(meta.get("name", "dsc-landmarks")),
            version=str(meta.get("version", "unknown")),
            device=str(engine.device),
        ),
        timings_ms=prediction.timings_ms,
    )


@router.post(
    "/landmarks",
    response_model=LandmarksResponse,
    responses=ERRORS,
    openapi_extra=FORM_SCHEMA,
    summary="68 facial landmarks with per-point confidence for every face in an image",
)
async def landmarks(request: Request, service: ServiceDep) -> LandmarksResponse:
    return to_response(await run_request(request, service), service)


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
    image = prediction.image
    for face in prediction.faces:
        image = draw_landmarks(image, face.points, face.confidence, box=np.asarray(face.box))
    png = await asyncio.get_running_loop().run_in_executor(None, encode_png, image)
    return Response(png, media_type="image/png")

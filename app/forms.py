"""The request form: the multipart body read into memory under a byte limit (413 before the whole body is read),
and the one parser of each text field (``boxes``, ``max_faces``, ``passes``), every failure a 400.

Starlette's form parser spools file parts over 1 MB to a temporary file; image bytes must never touch the disk,
so the body is read here with a hard cap and parsed in memory with python-multipart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.errors import ServiceError
from model.geometry import Box
from model.pipeline import MAX_PASSES, boxes_from_json

MAX_PARTS = 16


@dataclass
class Part:
    name: str = ""
    filename: str | None = None
    content_type: str = ""
    data: bytearray = field(default_factory=bytearray)


def too_large(limit: int) -> ServiceError:
    return ServiceError(413, "payload_too_large", f"the request body exceeds the {limit} byte upload limit")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServiceError(400, "bad_request", "invalid Content-Length header")
        if int(declared) > limit:
            raise too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
    except ClientDisconnect as exc:
        raise ServiceError(400, "client_disconnected", "the client went away before sending the body") from exc
    return bytes(body)


def parse_multipart(body: bytes, content_type: str) -> dict[str, Part]:
    """Parts by field name (the first of each name wins). Raises 422 when the body is not multipart."""
    mime, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise ServiceError(
            422,
            "validation_error",
            "send the image as multipart/form-data with a field named 'image'",
            reason="validation",
        )
    parts: list[Part] = []
    header_field, header_value = bytearray(), bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ServiceError(400, "bad_request", f"more than {MAX_PARTS} form fields")
        parts.append(Part())
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        part = parts[-1]
        part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        part.content_type = headers.get(b"content-type", b"").decode("latin-1")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
    })  # fmt: skip
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise ServiceError(400, "bad_request", f"malformed multipart body: {exc}") from exc
    out: dict[str, Part] = {}
    for part in parts:
        out.setdefault(part.name, part)
    return out


MAX_BOXES_TEXT = 16_384  # characters: 100 boxes of four long numbers fit many times over


def parse_boxes(raw: str | None, max_faces: int) -> list[Box] | None:
    """The one parser of the `boxes` field (:func:`model.pipeline.boxes_from_json`, bounded in length first);
    every failure is 400."""
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > MAX_BOXES_TEXT:
        raise ServiceError(400, "invalid_boxes", f"`boxes` is longer than {MAX_BOXES_TEXT} characters")
    try:
        boxes = boxes_from_json(raw)
    except ValueError as exc:
        raise ServiceError(400, "invalid_boxes", str(exc)) from None
    if len(boxes) > max_faces:
        raise ServiceError(400, "invalid_boxes", f"{len(boxes)} boxes given; max_faces is {max_faces}")
    return boxes


def parse_max_faces(raw: str | None, limit: int) -> int:
    """Most faces for this request (default and upper limit: ``LANDMARKS_MAX_FACES``)."""
    value = _bounded_int(raw, "max_faces", limit)
    return limit if value is None else value


def parse_passes(raw: str | None) -> int | None:
    """Network passes per face for this request; ``None`` when absent: the pipeline's defaults (``LANDMARKS_PASSES``
    for detected faces; for caller boxes one, two where a box does not fit its landmarks: ``Pipeline.passes_for``)."""
    return _bounded_int(raw, "passes", MAX_PASSES)


def _bounded_int(raw: str | None, field: str, most: int) -> int | None:
    """An integer form field from 1 to ``most`` (``None`` when absent or blank); else 400 ``invalid_<field>``."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ServiceError(400, f"invalid_{field}", f"`{field}` must be an integer") from None
    if not 1 <= value <= most:
        raise ServiceError(400, f"invalid_{field}", f"`{field}` must be between 1 and {most}")
    return value


def text_field(part_data: bytearray, field: str) -> str:
    try:
        return part_data.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError(400, f"invalid_{field}", f"`{field}` is not UTF-8 text") from None

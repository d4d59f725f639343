"""Image decoding: format from the bytes, pixel limit from the header before decoding, EXIF orientation."""

from __future__ import annotations

import io

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ServiceError

ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP", "MPO": "JPEG"}


def decode_image(data: bytes, max_pixels: int) -> NDArray[np.uint8]:
    """Bytes -> RGB uint8 ``(H, W, 3)``, EXIF-rotated.

    Raises :class:`ServiceError` 415 for anything that is not a decodable JPEG, PNG, WebP or BMP (whatever its
    name or declared type) and 422 when width x height exceeds ``max_pixels`` (read from the header, before the
    pixels are decoded: a decompression-bomb guard).
    """
    if not data:
        raise ServiceError(415, "unsupported_media_type", "the image is empty")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        if image.format not in ACCEPTED_FORMATS:
            raise ServiceError(
                415, "unsupported_media_type", f"{image.format} images are not supported; send JPEG, PNG, WebP or BMP"
            )
        width, height = image.size
        if width * height > max_pixels:
            raise ServiceError(
                422,
                "image_too_large",
                f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
                reason="too_many_pixels",
            )
        image.load()
        rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except ServiceError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own guard, above about 179 MP
        raise ServiceError(422, "image_too_large", str(exc), reason="too_many_pixels") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ServiceError(
            415, "unsupported_media_type", f"the bytes are not a decodable JPEG, PNG, WebP or BMP image ({exc})"
        ) from exc
    return np.ascontiguousarray(rgb)


def encode_png(rgb: NDArray[np.uint8]) -> bytes:
    """RGB image -> PNG bytes."""
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:  # pragma: no cover - cv2 cannot fail on a valid uint8 image
        raise RuntimeError("PNG encoding failed")
    return bytes(buffer)

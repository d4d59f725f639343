"""Image decoding: format from the bytes, pixel limit from the header before decoding, EXIF orientation.

One decode path for the library, the CLI and every route of the service: the header is read first (format,
size), the pixel limit and the service's in-flight pixel budget are applied before any pixel is decoded, the EXIF
orientation is applied when it can be read (a malformed EXIF block is ignored, never an error), and every pixel
mode becomes 8-bit RGB by its real range (16-bit and 32-bit grey are scaled, not clipped to white).

Pillow reads the header and judges every file; the pixels of 8-bit RGB and grey images (nearly every photo) are
decoded by OpenCV, which is about 3x faster here than Pillow's decode plus its copy into numpy (it is the largest
CPU cost of a request with caller boxes). Anything OpenCV declines goes through Pillow, which gives the error.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "BMP": "BMP", "MPO": "JPEG"}
ORIENTATION = 0x0112
FAST_MODES = ("RGB", "L")  # decoded by OpenCV to the same 8-bit RGB pixels
_CV_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
# Our own limit (max_pixels, read from the header) replaces Pillow's global bomb guard, whose error would otherwise
# reach callers with Pillow's wording before ours is checked.
Image.MAX_IMAGE_PIXELS = None

ImageErrorCode = Literal["unsupported_media_type", "image_too_large"]


class ImageError(ValueError):
    """Bytes that are not a photo this library takes. ``code`` is the stable name the service (415 / 422) and
    the CLI report; ``detail`` says what is wrong in one line."""

    def __init__(self, code: ImageErrorCode, detail: str) -> None:
        super().__init__(detail)
        self.code: ImageErrorCode = code
        self.detail = detail


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 when absent or unreadable: a malformed EXIF block leaves the image as stored)."""
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - Pillow raises many types on malformed EXIF; the pixels are still good
        log.info("ignoring a malformed EXIF block")
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation to a Pillow image (no copy when there is none)."""
    if _orientation(image) == 1:
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - as above
        log.info("ignoring a malformed EXIF block")
        return image


def orient_array(rgb: NDArray[np.uint8], orientation: int) -> NDArray[np.uint8]:
    """Apply EXIF orientation 1-8 to an ``(H, W, C)`` array, as ``ImageOps.exif_transpose`` does to an image."""
    if orientation in (5, 6, 7, 8):  # the four that swap width and height: a transpose, then as 1-4
        rgb = rgb.transpose(1, 0, 2)
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation == 2:
        return rgb[:, ::-1]
    if orientation == 3:
        return rgb[::-1, ::-1]
    if orientation == 4:
        return rgb[::-1]
    return rgb


def _to_rgb8(image: Image.Image) -> NDArray[np.uint8]:
    """8-bit RGB by the mode's real range: 16-bit grey / 255 of 65535, 32-bit int and float stretched."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.min() >= 0 and values.max() <= 65535):
            grey = values / 257.0
        else:
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            grey = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
        grey8 = np.clip(np.nan_to_num(grey).round(), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def decode_image(
    data: bytes, max_pixels: int | None = None, reserve: Callable[[int], None] | None = None
) -> NDArray[np.uint8]:
    """Bytes -> RGB uint8 ``(H, W, 3)``, EXIF-rotated.

    Raises :class:`ImageError` ``unsupported_media_type`` for anything that is not a decodable JPEG, PNG, WebP or
    BMP (whatever its name or declared type), ``image_too_large`` when width x height exceeds ``max_pixels`` (read
    from the header, before the pixels are decoded: a decompression-bomb guard; ``None``: no limit), and whatever
    ``reserve(pixels)`` raises (the service's in-flight pixel budget) before decoding.
    """
    if not data:
        raise ImageError("unsupported_media_type", "the image is empty")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise ImageError("unsupported_media_type", "the bytes are not a JPEG, PNG, WebP or BMP image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError("unsupported_media_type", f"the image header is corrupt ({type(exc).__name__})") from None
    if image.format not in ACCEPTED_FORMATS:
        raise ImageError(
            "unsupported_media_type", f"{image.format} images are not supported; send JPEG, PNG, WebP or BMP"
        )
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            "image_too_large", f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if reserve is not None:
        reserve(width * height)
    if image.mode in FAST_MODES:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CV_FLAGS)
        if pixels is not None and pixels.shape == (height, width, 3):
            return np.ascontiguousarray(orient_array(np.asarray(pixels, np.uint8), _orientation(image)))
    try:
        image.load()
        rgb = _to_rgb8(_orient(image))
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageError(
            "unsupported_media_type", f"the {image.format} data is truncated or corrupt ({type(exc).__name__})"
        ) from None
    return np.ascontiguousarray(rgb)

"""The service's side of image decoding: the in-flight pixel budget, the HTTP errors of
:func:`model.imaging.decode_image`'s refusals, and PNG encoding of the annotated preview."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import cv2
import numpy as np
from numpy.typing import NDArray

from app.errors import ServiceError, unavailable
from model import imaging

STATUS = {"unsupported_media_type": 415, "image_too_large": 422}
REASON = {"image_too_large": "too_many_pixels"}  # the rejection counter's label


class PixelBudget:
    """Decoded pixels in flight across concurrent requests, bounded: a request that would pass the budget gets
    ``503 busy`` (Retry-After) instead of decoding, so a burst of small files that claim huge sizes cannot take
    the memory. One image alone is always admitted (it is under the per-image limit, which the budget exceeds)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[Callable[[int], None]]:
        """A reservation for one request: call the yielded function with the pixels it will decode."""
        held = 0

        def reserve(pixels: int) -> None:
            nonlocal held
            with self._lock:
                if self.used > 0 and self.used + pixels > self.limit:
                    raise unavailable(
                        "busy", f"{self.used} decoded pixels are in flight (limit {self.limit}); retry shortly"
                    )
                self.used += pixels
                held += pixels

        try:
            yield reserve
        finally:
            with self._lock:
                self.used -= held


def decode_image(data: bytes, max_pixels: int, reserve: Callable[[int], None] | None = None) -> NDArray[np.uint8]:
    """:func:`model.imaging.decode_image` with its refusals as HTTP errors: 415 for anything that is not a
    decodable JPEG, PNG, WebP or BMP, 422 over ``max_pixels`` (before decoding), and what ``reserve(pixels)``
    raises (the in-flight budget, :class:`PixelBudget`: 503 busy)."""
    try:
        return imaging.decode_image(data, max_pixels, reserve)
    except imaging.ImageError as exc:
        raise ServiceError(STATUS[exc.code], exc.code, exc.detail, reason=REASON.get(exc.code)) from None


def encode_png(rgb: NDArray[np.uint8]) -> bytes:
    """RGB image -> PNG bytes."""
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:  # pragma: no cover - cv2 cannot fail on a valid uint8 image
        raise RuntimeError("PNG encoding failed")
    return bytes(buffer)

"""Crop geometry: one explicit 2x3 affine matrix per face, one pixel convention, float coordinates throughout.

Pixel convention (the same as OpenCV's ``warpAffine``): integer coordinates are pixel *centres*; (0, 0) is the
centre of the top-left pixel and the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5]. 300-W ``.pts`` files are
1-based and are shifted by -1 when read (``training.datasets``).

Three frames:

* **image**: the original (EXIF-rotated) image.
* **crop**: the ``S x S`` network input. :func:`crop_matrix` maps image -> crop; :func:`warp` applies it.
* **heatmap**: ``S / r`` pixels for heatmap stride ``r``. Heatmap pixel ``u`` covers crop pixels
  ``[r u, r u + r - 1]``, so crop ``x = r u + (r - 1) / 2`` (:func:`heatmap_to_crop`).

A face *box* ``[x1, y1, x2, y2]`` is the tight box around the face's 68 points. The crop is the square of side
``max(w, h) * (1 + margin)`` centred on the box (default margin 0.25, so 12.5 % on each side of the longer edge).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import cv2
import numpy as np
from numpy.typing import NDArray

DEFAULT_MARGIN = 0.25

FloatArray = NDArray[np.float64]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
T = TypeVar("T", bound=Any)  # a numpy array or a torch tensor: the two maps below are plain arithmetic


def as_box(box: NDArray[np.floating]) -> Box:
    """A ``[x1, y1, x2, y2]`` array as the plain-float :data:`Box` tuple."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1, y1, x2, y2)


def line_roll(start: NDArray[np.floating], end: NDArray[np.floating]) -> float:
    """Angle in degrees of the line from ``start`` to ``end`` in image coordinates (y down: positive descends to the
    right); from the right eye to the left eye, a face's roll."""
    return math.degrees(math.atan2(float(end[1] - start[1]), float(end[0] - start[0])))


def box_from_points(points: NDArray[np.floating]) -> FloatArray:
    """Tight ``[x1, y1, x2, y2]`` box around ``(K, 2)`` points, ignoring non-finite rows."""
    finite = points[np.isfinite(points).all(axis=1)]
    if len(finite) == 0:
        raise ValueError("no finite landmark to build a box from")
    return np.array([*finite.min(axis=0), *finite.max(axis=0)], dtype=np.float64)


def crop_matrix(
    box: NDArray[np.floating],
    output_size: int,
    margin: float = DEFAULT_MARGIN,
    rotation_deg: float = 0.0,
    scale: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
) -> FloatArray:
    """2x3 affine from image to crop pixels for the square around ``box``.

    The box centre goes to the crop centre ``((S - 1) / 2, (S - 1) / 2)``. Augmentation composes into the same
    matrix: ``rotation_deg`` counter-clockwise in the image, ``scale`` > 1 zooms in, ``shift`` moves the
    crop window by a fraction of its side, and ``flip`` mirrors horizontally (the caller must also permute the
    landmark indices with :data:`model.landmarks.MIRROR`).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + margin)
    cx = (x1 + x2) / 2 + shift[0] * side
    cy = (y1 + y2) / 2 + shift[1] * side
    s = output_size / side * scale
    a = math.radians(rotation_deg)
    cos, sin = math.cos(a) * s, math.sin(a) * s
    # Rotate and scale about the box centre, then move it to the crop centre.
    linear = np.array([[cos, sin], [-sin, cos]], dtype=np.float64)
    if flip:
        linear = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ linear
    centre_out = np.array([(output_size - 1) / 2, (output_size - 1) / 2])
    translation = centre_out - linear @ np.array([cx, cy])
    return np.hstack([linear, translation[:, None]])


def invert(matrix: NDArray[np.floating]) -> FloatArray:
    """Inverse of a 2x3 affine matrix."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2].astype(np.float64)


def transform_points(matrix: NDArray[np.floating], points: NDArray[np.floating]) -> FloatArray:
    """Apply a 2x3 affine to ``(K, 2)`` points (float in, float out)."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix, dtype=np.float64)[:, 2]


def warp(image: NDArray[np.uint8], matrix: NDArray[np.floating], output_size: int) -> NDArray[np.uint8]:
    """Resample ``image`` into the ``S x S`` crop (bilinear, black outside the image)."""
    crop = cv2.warpAffine(
        image,
        np.asarray(matrix, dtype=np.float64),
        (output_size, output_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return np.asarray(crop, dtype=np.uint8)


def heatmap_to_crop(points: T, stride: int) -> T:
    """Heatmap pixel coordinates -> crop pixel coordinates (see the module docstring)."""
    return points * stride + (stride - 1) / 2


def crop_to_heatmap(points: T, stride: int) -> T:
    """Crop pixel coordinates -> heatmap pixel coordinates."""
    return (points - (stride - 1) / 2) / stride

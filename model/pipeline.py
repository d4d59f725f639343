"""How a face becomes a network input, and how a first pass's landmarks frame the second: one place for both.

The service (``app.service``), the CLI, ``training.evaluate`` and the benchmarks all crop through
:func:`face_crop` and re-frame through :func:`refine`, so what is evaluated is what is served.

* A face comes with a ``box`` (tight box around its 68 points, :mod:`model.geometry`) and optionally a ``roll``
  (degrees, the eye line's angle in the image). With a roll the crop is rotated so the face is upright in it.
* The **second pass** re-frames a face from its first-pass landmarks: the tight box of the points, measured in the
  face's own upright frame when the crops are aligned (roll from the eye centres of the 68 points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model.geometry import Box, crop_matrix, invert, warp
from model.landmarks import LEFT_EYE, RIGHT_EYE


@dataclass(frozen=True)
class Framing:
    """Where to crop one face: its landmark-convention ``box`` and in-plane ``roll`` in degrees (0: axis-aligned)."""

    box: Box
    roll: float = 0.0


def face_crop(image: NDArray[np.uint8], framing: Framing, size: int) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """The ``size`` x ``size`` network input for one face and its crop -> image affine."""
    # crop_matrix rotates counter-clockwise by its angle; a face whose eye line descends to the right (positive
    # roll in image coordinates, y down) is turned back upright by rotating the image by +roll.
    m = crop_matrix(np.asarray(framing.box, dtype=np.float64), size, rotation_deg=framing.roll)
    return warp(image, m, size), invert(m)


def eye_roll(points: NDArray[np.floating]) -> float:
    """Roll of a face in degrees from its 68 landmarks: the angle of the line from the right to the left eye."""
    right = np.asarray(points)[list(RIGHT_EYE)].mean(axis=0)
    left = np.asarray(points)[list(LEFT_EYE)].mean(axis=0)
    return math.degrees(math.atan2(float(left[1] - right[1]), float(left[0] - right[0])))


def upright_box(points: NDArray[np.floating], roll: float) -> Box:
    """Tight box of ``points`` in the frame rotated by ``-roll``, expressed as an image-frame box with the same
    centre and size (what :func:`face_crop` needs: it uses the centre and the longer side)."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise ValueError("no finite landmark to frame a face from")
    a = math.radians(roll)
    c, s = math.cos(a), math.sin(a)
    to_upright = np.array([[c, s], [-s, c]])  # rotates the image frame by -roll
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2
    local = (pts - centre) @ to_upright.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    mid = centre + ((lo + hi) / 2) @ to_upright  # back to the image frame
    half = (hi - lo) / 2
    return (float(mid[0] - half[0]), float(mid[1] - half[1]), float(mid[0] + half[0]), float(mid[1] + half[1]))


def refine(points: NDArray[np.floating], aligned: bool) -> Framing:
    """Framing for the second pass from first-pass landmarks ``(68, 2)``."""
    roll = eye_roll(points) if aligned else 0.0
    return Framing(upright_box(points, roll), roll)

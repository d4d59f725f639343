"""The iBUG 300-W 68-point markup (0-based indices).

jaw 0-16, right brow 17-21, left brow 22-26, nose bridge 27-30, lower nose 31-35, right eye 36-41, left eye
42-47, outer mouth 48-59, inner mouth 60-67 ("right"/"left" are the subject's, so the right eye is on the image's
left). Public code has shipped wrong flip pairs; these are checked in tests (an involution that maps a
symmetric face onto itself).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

NUM_LANDMARKS = 68

_PAIRS: tuple[tuple[int, int], ...] = (
    *((i, 16 - i) for i in range(8)),  # jaw; 8 is the chin
    (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),  # brows
    (31, 35), (32, 34),  # nostrils; 27-30 and 33 on the midline
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),  # eyes
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),  # outer mouth; 51, 57 on the midline
    (60, 64), (61, 63), (65, 67),  # inner mouth; 62, 66 on the midline
)  # fmt: skip


def _mirror() -> tuple[int, ...]:
    index = list(range(NUM_LANDMARKS))
    for a, b in _PAIRS:
        index[a], index[b] = b, a
    return tuple(index)


MIRROR: tuple[int, ...] = _mirror()
"""After a horizontal flip, point ``i`` of the flipped face is point ``MIRROR[i]`` of the original."""

OUTER_EYE_CORNERS: tuple[int, int] = (36, 45)
"""Inter-ocular normalisation (300-W convention)."""

RIGHT_EYE: tuple[int, ...] = tuple(range(36, 42))
LEFT_EYE: tuple[int, ...] = tuple(range(42, 48))
"""Eye contours; their means are the pupil centres for inter-pupil normalisation."""

GROUPS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "right_brow": tuple(range(17, 22)),
    "left_brow": tuple(range(22, 27)),
    "nose": tuple(range(27, 36)),
    "right_eye": RIGHT_EYE,
    "left_eye": LEFT_EYE,
    "mouth": tuple(range(48, 68)),
}
"""Contours for drawing and per-region error tables."""

CONTOURS: tuple[tuple[int, ...], ...] = (
    tuple(range(0, 17)),
    tuple(range(17, 22)),
    tuple(range(22, 27)),
    tuple(range(27, 31)),
    tuple(range(31, 36)),
    (*RIGHT_EYE, 36),
    (*LEFT_EYE, 42),
    (*range(48, 60), 48),
    (*range(60, 68), 60),
)
"""Polylines through the markup, for rendering."""


def format_pts(points: NDArray[np.floating]) -> str:
    """A 300-W ``.pts`` file's text for ``(68, 2)`` 0-based pixel coordinates (the format is 1-based)."""
    rows = "\n".join(f"{float(x) + 1:.3f} {float(y) + 1:.3f}" for x, y in points)
    return f"version: 1\nn_points:  {len(points)}\n{{\n{rows}\n}}\n"

"""Draw landmarks on an image: contours, points coloured by confidence (red 0 -> green 1), optional truth."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from model.landmarks import CONTOURS
from model.pose import PoseFit, axes_2d

AXIS_COLOURS = ((230, 40, 40), (40, 200, 40), (40, 90, 255))  # RGB of the head's x (right), y (up), z (out)


def confidence_colour(c: float) -> tuple[int, int, int]:
    """RGB from red (0) through yellow (0.5) to green (1)."""
    c = float(np.clip(c, 0.0, 1.0))
    return (int(255 * min(1.0, 2 * (1 - c))), int(255 * min(1.0, 2 * c)), 0)


def draw_landmarks(
    image: NDArray[np.uint8],
    points: NDArray[np.floating],
    confidence: NDArray[np.floating] | None = None,
    box: NDArray[np.floating] | None = None,
    truth: NDArray[np.floating] | None = None,
) -> NDArray[np.uint8]:
    """A copy of the RGB ``image`` with one face's 68 ``points`` drawn (sub-pixel, anti-aliased).

    Coordinates far outside the image (a caller's box with a huge far corner) are clipped to one image size
    beyond its edges, so OpenCV's fixed-point drawing never overflows; non-finite points are not drawn.
    """
    out = np.ascontiguousarray(image.copy())
    side = max(out.shape[:2])
    scale = side / 500.0
    radius, thickness, shift = max(1, round(2 * scale)), max(1, round(scale)), 4
    fixed = 1 << shift

    def clip(p: NDArray[np.floating]) -> NDArray[np.float64]:
        return np.clip(np.nan_to_num(np.asarray(p, dtype=np.float64), nan=-side), -side, 2 * side)

    def pt(p: NDArray[np.floating]) -> tuple[int, int]:
        q = clip(p)
        return int(round(float(q[0]) * fixed)), int(round(float(q[1]) * fixed))

    if box is not None:
        cv2.rectangle(out, pt(box[:2]), pt(box[2:]), (80, 160, 255), thickness, cv2.LINE_AA, shift)
    if truth is not None:
        for p in truth:
            cv2.circle(out, pt(p), radius, (255, 255, 255), -1, cv2.LINE_AA, shift)
    finite: NDArray[np.bool_] = np.asarray(np.isfinite(np.asarray(points, dtype=np.float64)).all(axis=1))
    for contour in CONTOURS:
        if finite[list(contour)].all():
            poly = (clip(np.asarray(points)[list(contour)]) * fixed).round().astype(np.int32)
            cv2.polylines(out, [poly], False, (0, 200, 255), thickness, cv2.LINE_AA, shift)
    conf = np.ones(len(points)) if confidence is None else np.asarray(confidence)
    for p, c, ok in zip(points, conf, finite, strict=True):
        if ok:
            cv2.circle(out, pt(p), radius + 1, confidence_colour(float(c)), -1, cv2.LINE_AA, shift)
    return out


def draw_pose_axes(image: NDArray[np.uint8], fit: PoseFit, box: tuple[float, float, float, float]) -> NDArray[np.uint8]:
    """A copy of ``image`` with the head's three axes drawn from its origin (:mod:`model.pose`): x (the image's
    right on a frontal face) red, y (up) green, z (out of the face, where it looks) blue, each half the box's longer
    side long."""
    ends = axes_2d(fit, 0.5 * max(box[2] - box[0], box[3] - box[1]))
    if ends is None or not np.isfinite(ends).all():
        return image
    out = np.ascontiguousarray(image.copy())
    side = max(out.shape[:2])
    thickness, shift = max(2, round(side / 300)), 4
    fixed = 1 << shift
    q = (np.clip(ends, -side, 2 * side) * fixed).round().astype(int)
    for k in (3, 2, 1):  # z first, then y, then x on top, so the axes pointing at the viewer stay visible
        start, end = (int(q[0, 0]), int(q[0, 1])), (int(q[k, 0]), int(q[k, 1]))
        cv2.arrowedLine(out, start, end, AXIS_COLOURS[k - 1], thickness, cv2.LINE_AA, shift, 0.15)
    return out


def draw_label(image: NDArray[np.uint8], text: str, box: tuple[float, float, float, float]) -> NDArray[np.uint8]:
    """A copy of ``image`` with ``text`` (a track id) on a dark patch above the box's top-left corner."""
    out = np.ascontiguousarray(image.copy())
    scale = max(0.5, max(out.shape[:2]) / 900)
    thickness = max(1, round(scale * 1.5))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x = int(np.clip(box[0], 0, max(0, out.shape[1] - w - 4)))
    y = int(np.clip(box[1] - 6, h + base + 2, out.shape[0] - 2))
    cv2.rectangle(out, (x, y - h - base - 2), (x + w + 4, y + 2), (20, 20, 20), -1)
    cv2.putText(out, text, (x + 2, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out

"""Evaluation metrics as pure functions; the normalisation is always an argument (§4.2.2, eqs. 10-12).

Shapes: predictions and ground truth ``(N, 68, 2)`` in pixels; per-image values ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from model.landmarks import LEFT_EYE, OUTER_EYE_CORNERS, RIGHT_EYE

Array = NDArray[np.float64]

# The last bin is open-ended: a few AFLW2000-3D poses are fitted with |yaw| slightly above 90 degrees.
YAW_BINS: tuple[tuple[float, float], ...] = ((0.0, 30.0), (30.0, 60.0), (60.0, float("inf")))


def inter_ocular(gt: Array) -> Array:
    """Distance between the outer eye corners (points 36 and 45)."""
    a, b = OUTER_EYE_CORNERS
    return np.asarray(np.linalg.norm(gt[:, a] - gt[:, b], axis=-1), dtype=np.float64)


def inter_pupil(gt: Array) -> Array:
    """Distance between the eye centres (means of the six contour points of each eye)."""
    right = gt[:, list(RIGHT_EYE)].mean(axis=1)
    left = gt[:, list(LEFT_EYE)].mean(axis=1)
    return np.asarray(np.linalg.norm(right - left, axis=-1), dtype=np.float64)


def box_size(gt: Array) -> Array:
    """sqrt(w * h) of the tight ground-truth landmark box (the AFLW2000-3D / 3DDFA convention)."""
    wh = gt.max(axis=1) - gt.min(axis=1)
    return np.asarray(np.sqrt(wh[:, 0] * wh[:, 1]), dtype=np.float64)


NORMALISERS = {"inter_ocular": inter_ocular, "inter_pupil": inter_pupil, "box": box_size}


def point_errors(pred: Array, gt: Array) -> Array:
    """Euclidean error of every point, ``(N, 68)`` pixels."""
    return np.asarray(np.linalg.norm(pred - gt, axis=-1), dtype=np.float64)


def nme(pred: Array, gt: Array, norm: Array) -> Array:
    """Per-image NME (eq. 10): mean point error divided by ``norm`` (one distance per image)."""
    return point_errors(pred, gt).mean(axis=1) / norm


def ced(errors: Array, max_error: float = 0.1, steps: int = 1001) -> tuple[Array, Array]:
    """Cumulative error distribution (eq. 11): thresholds and the fraction of images at or below each."""
    thresholds = np.linspace(0.0, max_error, steps)
    fractions = (np.asarray(errors)[None, :] <= thresholds[:, None]).mean(axis=1)
    return thresholds, fractions


def auc(errors: Array, threshold: float = 0.07, steps: int = 1001) -> float:
    """Area under the CED curve up to ``threshold``, divided by ``threshold`` (eq. 12), in [0, 1]."""
    x, y = ced(errors, threshold, steps)
    return float(np.trapezoid(y, x) / threshold)


def failure_rate(errors: Array, threshold: float) -> float:
    """Fraction of images whose NME exceeds ``threshold``."""
    return float((np.asarray(errors) > threshold).mean())


def summarise(errors: Array, thresholds: Sequence[float] = (0.07, 0.08, 0.10)) -> dict[str, float]:
    """Mean / median NME in %, AUC@0.07 in %, failure rates in % at each threshold."""
    out = {
        "count": float(len(errors)),
        "nme_mean": 100 * float(np.mean(errors)),
        "nme_median": 100 * float(np.median(errors)),
        "auc_0.07": 100 * auc(errors, 0.07),
    }
    for t in thresholds:
        out[f"failure_{t:.2f}"] = 100 * failure_rate(errors, t)
    return out


def yaw_table(errors: Array, yaw_deg: Array, unit: float = 100.0) -> dict[str, float]:
    """Mean error per absolute-yaw bin [0, 30), [30, 60), [60, 90] and their balanced mean (3DDFA), times ``unit``
    (100: NMEs as %; 1: errors kept in their own unit, e.g. degrees)."""
    yaw = np.abs(np.asarray(yaw_deg))
    table: dict[str, float] = {}
    means = []
    for lo, hi in YAW_BINS:
        mask = (yaw >= lo) & (yaw < hi)
        key = f"[{lo:.0f},{hi:.0f})" if np.isfinite(hi) else f"[{lo:.0f},90]"
        table[key] = unit * float(errors[mask].mean()) if mask.any() else float("nan")
        table[f"{key}_count"] = float(mask.sum())
        if mask.any():
            means.append(table[key])
    table["balanced_mean"] = float(np.mean(means)) if means else float("nan")
    return table


HOPENET_MAX_DEG = 99.0  # HopeNet's AFLW2000-3D protocol leaves out faces with an angle beyond this


def wrap_degrees(angles: Array) -> Array:
    """Angle differences in degrees, wrapped to [-180, 180)."""
    return np.asarray((np.asarray(angles, dtype=np.float64) + 180) % 360 - 180, dtype=np.float64)


def angle_errors(got: Array, truth: Array) -> Array:
    """Absolute differences of angles in degrees, wrapped to [0, 180]."""
    return np.abs(wrap_degrees(np.asarray(got) - np.asarray(truth)))


def hopenet_keeps(pose: Sequence[float] | None) -> bool:
    """Whether HopeNet's protocol keeps a face of this ground-truth pose: every angle within ±99 degrees."""
    return pose is not None and max(abs(a) for a in pose) <= HOPENET_MAX_DEG


def spearman(a: Array, b: Array) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)

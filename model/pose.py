"""Head pose from the 68 points: a 3D face fitted to them, yaw, pitch and roll in degrees.

**Axes and signs** are AFLW2000-3D's ``Pose_Para`` (3DDFA's): the head frame has x to the image's right on a
frontal face, y up and z out of the face towards the camera; a head at ``(pitch, yaw, roll)`` is
``R = Rx(pitch) @ Ry(yaw) @ Rz(roll)`` applied to it (:func:`rotation`), then projected onto the image with y up.
Seen in the photo: **yaw** > 0 turns the face towards the image's left (the subject's right), **pitch** > 0 tilts
it up (the face looks up), **roll** > 0 turns it clockwise in the image. A frontal, upright face
is (0, 0, 0).

**Method** (chosen on AFLW2000-3D val, :mod:`training.fit_head`): a weak-perspective fit of a 3D face
(:class:`HeadModel`: a mean shape, each point weighted by how well a fixed 3D point explains its annotation
convention) to the points, each point also weighted by its confidence: the scaled projection by weighted least
squares, then the nearest rotation (SVD). The head model also holds shape modes, which the fit can alternate with
the rotation (``PoseOptions.shape_modes``); on val they did not pay, so the default fit uses none. A learned
linear :class:`Correction` of the angles follows. The head model
is built from the AFLW2000-3D train split and ships beside the checkpoint (``model/weights/head_model.npz``).

**Honest failure**: :func:`estimate_pose` returns no angles, with a reason, when fewer than ``min_points``
points are confident, when the points are degenerate (collinear, or a projection no rotation can make), or when
the fit explains them badly. A pose's ``confidence`` is the mean confidence of the face's points: the pose is as
trustworthy as the points it is fitted to. It ranks pose errors on AFLW2000-3D val where the fit's residual (the
rule before 2026-12-07) stopped ranking them once annotation conventions reshaped the points
(``model/weights/head_model.json``, ``confidence_rank_val``); the residual is kept on :class:`PoseFit`.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.landmarks import NUM_LANDMARKS

Array = NDArray[np.float64]

DEFAULT_HEAD_MODEL = Path(__file__).parent / "weights" / "head_model.npz"


def rotation(pitch: float, yaw: float, roll: float) -> Array:
    """``Rx(pitch) @ Ry(yaw) @ Rz(roll)`` for angles in radians (AFLW2000-3D's ``Pose_Para`` convention)."""
    cx, sx, cy, sy, cz, sz = (math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw), math.cos(roll),
                              math.sin(roll))  # fmt: skip
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, sx], [0.0, -sx, cx]])
    ry = np.array([[cy, 0.0, -sy], [0.0, 1.0, 0.0], [sy, 0.0, cy]])
    rz = np.array([[cz, sz, 0.0], [-sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rx @ ry @ rz


def angles(r: Array) -> tuple[float, float, float]:
    """``(pitch, yaw, roll)`` in radians of a rotation made by :func:`rotation` (its inverse)."""
    yaw = -math.asin(float(np.clip(r[0, 2], -1.0, 1.0)))
    roll = math.atan2(float(r[0, 1]), float(r[0, 0]))
    pitch = math.atan2(float(r[1, 2]), float(r[2, 2]))
    return pitch, yaw, roll


def project(head: Array, r: Array, scale: float, t: Array) -> Array:
    """Image points ``(K, 2)`` (y down) of a 3D head ``(K, 3)`` at rotation ``r``, ``scale`` and image ``t``."""
    v = scale * (head @ r[:2].T)
    return np.stack([v[:, 0] + t[0], -v[:, 1] + t[1]], axis=1)


FEATURES = NUM_LANDMARKS * 2 + 9  # the correction's input: the points in the fitted head's frame, the rotation


@dataclass(frozen=True)
class Correction:
    """A linear correction of the fitted angles, learned on training faces' predicted points (ridge regression):
    ``(yaw, pitch, roll) += ((features - mean) / scale) @ weights + bias`` with :func:`correction_features`."""

    mean: Array  # (F,)
    scale: Array  # (F,)
    weights: Array  # (F, 3)
    bias: Array  # (3,) degrees

    def __post_init__(self) -> None:
        shapes = (self.mean.shape, self.scale.shape, self.weights.shape, self.bias.shape)
        if shapes != ((FEATURES,), (FEATURES,), (FEATURES, 3), (3,)):
            raise ValueError(f"pose correction shapes {self.mean.shape} / {self.weights.shape}, expected ({FEATURES})")
        if not (np.isfinite(self.weights).all() and (self.scale > 0).all()):
            raise ValueError("pose correction must be finite with positive scales")

    def __call__(self, features: Array) -> Array:
        return np.asarray(((features - self.mean) / self.scale) @ self.weights + self.bias, dtype=np.float64)


@dataclass(frozen=True)
class HeadModel:
    """A 3D face in the head frame: ``mean`` ``(68, 3)``, ``modes`` ``(M, 68, 3)`` scaled by their standard
    deviations, ``weights`` ``(68,)`` how far each point's annotation follows a fixed 3D point (1 = exactly), and
    the learned :class:`Correction` of the fitted angles (``None``: the geometric fit alone)."""

    mean: Array
    modes: Array
    weights: Array
    correction: Correction | None = None

    def __post_init__(self) -> None:
        if self.mean.shape != (NUM_LANDMARKS, 3) or self.modes.shape[1:] != (NUM_LANDMARKS, 3):
            raise ValueError(f"head model shapes {self.mean.shape} / {self.modes.shape}, expected (68, 3)")
        if self.weights.shape != (NUM_LANDMARKS,) or not np.isfinite(self.weights).all():
            raise ValueError("head model weights must be 68 finite values")

    @classmethod
    def load(cls, path: Path = DEFAULT_HEAD_MODEL) -> HeadModel:
        """Read a head model; a missing or malformed file raises ``ValueError`` naming it."""
        try:
            with np.load(path) as data:
                arrays = {k: np.asarray(data[k], np.float64) for k in data.files}
            correction = None
            if "correction_weights" in arrays:
                correction = Correction(*(arrays[f"correction_{k}"] for k in ("mean", "scale", "weights", "bias")))
            return cls(arrays["mean"], arrays["modes"], arrays["weights"], correction)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a head model ({exc})") from exc

    def save(self, path: Path) -> None:
        arrays = {"mean": self.mean, "modes": self.modes, "weights": self.weights}
        if self.correction is not None:
            c = self.correction
            arrays |= {"correction_mean": c.mean, "correction_scale": c.scale, "correction_weights": c.weights,
                       "correction_bias": c.bias}  # fmt: skip
        stored: dict[str, Any] = {k: v.astype(np.float32) for k, v in arrays.items()}
        np.savez(path, **stored)


@dataclass(frozen=True)
class PoseOptions:
    """How a pose is fitted and when it is refused."""

    shape_modes: int = 0  # how many of the head model's modes the fit may use (none: they did not pay on val,
    # model/weights/head_model.json)
    iterations: int = 1  # rotation / shape alternations (one is exact without modes)
    point_noise: float = 0.05  # expected landmark error, in units of the head's RMS radius: the ridge on the modes
    min_confidence: float = 0.3  # a point at or above this counts as confident
    min_points: int = 20  # fewer confident points: no pose
    max_residual: float = 0.08  # weighted RMS residual / face size above this: no pose (a poor fit)


@dataclass(frozen=True)
class Pose:
    """Head pose in degrees (signs in the module docstring) and how much to trust it (0-1: the mean confidence of
    the points it was fitted to)."""

    yaw: float
    pitch: float
    roll: float
    confidence: float


@dataclass(frozen=True)
class PoseFit:
    """The outcome for one face: a :class:`Pose`, or ``None`` with ``reason`` saying why not."""

    pose: Pose | None
    reason: str | None = None
    rotation: Array | None = None  # (3, 3)
    scale: float = 0.0
    translation: Array | None = None  # (2,) image pixels of the head frame's origin
    residual: float | None = None  # weighted RMS distance of the points from the fitted head / face size


def _weighted_affine(head: Array, v: Array, w: Array) -> tuple[Array, Array]:
    """Least-squares 2x3 ``M`` and ``t`` with ``v ≈ head @ M.T + t`` under per-point weights (normal equations)."""
    design = np.empty((len(head), 4))
    design[:, :3], design[:, 3] = head, 1.0
    weighted = design * w[:, None]
    solution = np.asarray(np.linalg.solve(design.T @ weighted + 1e-9 * np.eye(4), weighted.T @ v), np.float64)
    return solution[:3].T, solution[3]


def _cross(a: Array, b: Array) -> Array:
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def estimate_pose(
    points: NDArray[np.floating],
    confidence: NDArray[np.floating] | None,
    head: HeadModel,
    options: PoseOptions = PoseOptions(),
) -> PoseFit:
    """Fit ``head`` to one face's image points ``(68, 2)`` (confidences ``(68,)`` weight them, ``None``: all 1).
    Never raises on bad points: what cannot be fitted is a :class:`PoseFit` without a pose, with the reason."""
    try:
        with np.errstate(all="ignore"):
            return _fit(points, confidence, head, options)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        return PoseFit(None, f"the fit failed ({exc})")


def _fit(
    points: NDArray[np.floating], confidence: NDArray[np.floating] | None, head: HeadModel, options: PoseOptions
) -> PoseFit:
    pts = np.asarray(points, dtype=np.float64)
    conf = np.ones(len(pts)) if confidence is None else np.asarray(confidence, dtype=np.float64)
    if pts.shape != (NUM_LANDMARKS, 2) or conf.shape != (NUM_LANDMARKS,):
        return PoseFit(None, "needs 68 points")
    usable = np.isfinite(pts).all(axis=1) & np.isfinite(conf) & (conf >= options.min_confidence)
    if int(usable.sum()) < options.min_points:
        return PoseFit(None, f"too few confident points ({int(usable.sum())} of 68, need {options.min_points})")
    v = np.where(usable[:, None], pts, 0.0) * np.array([1.0, -1.0])  # y up, as the head frame
    w = np.where(usable, head.weights * np.clip(conf, 0.0, 1.0), 0.0)
    centred = v[usable] - v[usable].mean(axis=0)
    spread = np.linalg.svd(centred, compute_uv=False)
    if spread[1] < 1e-3 * max(spread[0], 1e-9):
        return PoseFit(None, "degenerate points (collinear)")
    modes = head.modes[: options.shape_modes]
    flat_modes = modes.reshape(len(modes), NUM_LANDMARKS * 3)
    coeffs = np.zeros(len(modes))
    r = np.eye(3)
    scale, t = 1.0, np.zeros(2)
    for _ in range(options.iterations):
        shape = head.mean + (coeffs @ flat_modes).reshape(-1, 3)
        m, t = _weighted_affine(shape, v, w)
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        if s[1] < 0.3 * s[0]:  # no rotation projects a face this flat: the points are not a face
            return PoseFit(None, "degenerate points (no rotation fits them)")
        r2 = u @ vt
        r = np.vstack([r2, _cross(r2[0], r2[1])])
        scale = float(s.mean())
        if len(modes):  # ridge on the shape coefficients, rotation and scale fixed
            residual = (v - t - scale * (head.mean @ r[:2].T)).reshape(-1)
            basis = scale * np.einsum("mkd,ed->kem", modes, r[:2]).reshape(-1, len(modes))
            ww = np.repeat(w, 2)
            prior = (options.point_noise * scale) ** 2 * float(w.sum() / w.max())
            lhs = basis.T @ (basis * ww[:, None]) + prior * np.eye(len(modes))
            coeffs = np.linalg.solve(lhs, basis.T @ (residual * ww))
    shape = head.mean + (coeffs @ flat_modes).reshape(-1, 3)
    fitted = scale * (shape @ r[:2].T) + t
    size = scale * float(np.sqrt(np.prod(np.ptp(head.mean[:, :2], axis=0))))
    error = float(np.sqrt((w * ((fitted - v) ** 2).sum(1)).sum() / w.sum())) / max(size, 1e-9)
    if not math.isfinite(error) or error > options.max_residual:
        return PoseFit(None, f"the points fit no head well (residual {error:.3f} of the face size)")
    translation = np.array([t[0], -t[1]])
    pitch, yaw, roll = (math.degrees(a) for a in angles(r))
    if head.correction is not None:
        yaw, pitch, roll = np.array([yaw, pitch, roll]) + head.correction(
            correction_features(pts, r, scale, translation)
        )
        r = rotation(math.radians(pitch), math.radians(yaw), math.radians(roll))
    trust = float(np.clip(np.where(np.isfinite(conf), conf, 0.0), 0.0, 1.0).mean())  # a non-finite one counts 0
    pose = Pose(float(yaw), float(pitch), float(roll), trust)
    return PoseFit(pose, None, r, scale, translation, error)


def correction_features(points: Array, r: Array, scale: float, translation: Array) -> Array:
    """What :class:`Correction` reads: the points relative to the fitted head (origin, scale and roll removed;
    unusable points at the origin) and the fitted rotation, ``(FEATURES,)``."""
    local = (np.asarray(points, dtype=np.float64) - translation) / scale
    roll = math.atan2(float(r[0, 1]), float(r[0, 0]))
    c, s = math.cos(roll), math.sin(roll)
    local = local @ np.array([[c, s], [-s, c]])
    local = np.where(np.isfinite(local), local, 0.0)
    return np.concatenate([local.reshape(-1), r.reshape(-1)])


def axes_2d(fit: PoseFit, length: float) -> Array | None:
    """Image points ``(4, 2)``: the head origin, then the ends of its x (right), y (up) and z (out of the face)
    axes, each ``length`` pixels long in 3D: what the renderers draw."""
    if fit.rotation is None or fit.translation is None or fit.scale <= 0:
        return None
    ends = np.vstack([np.zeros(3), np.eye(3)]) * (length / fit.scale)
    return project(ends, fit.rotation, fit.scale, fit.translation)

"""The heatmap codec shared by training (encode) and serving / evaluation (decode).

Coordinates are float heatmap pixels with pixel centres on integers: (0, 0) is the centre of the top-left
heatmap pixel (see :mod:`model.geometry` for the map between heatmap, crop and image pixels).

Targets follow eq. 2 without the 1 / (sigma sqrt(2 pi)) factor, so the ideal peak is exactly 1: the factor
only rescales the loss, and a unit peak makes the confidence below directly interpretable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CONFIDENCE_SCORE = "stage-face-geomean"  # what :func:`confidence` computes; stored beside a fitted calibration


@dataclass(frozen=True)
class Calibration:
    """Monotone piecewise-linear map from the raw confidence score to calibrated confidence (fitted on val).

    ``xs`` strictly increasing raw values, ``ys`` non-decreasing values in [0, 1]; outside ``xs`` the end values
    hold. Stored in checkpoint metadata as two lists with the name of the score they were fitted on
    (:data:`CONFIDENCE_SCORE`).
    """

    xs: tuple[float, ...]
    ys: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.xs) != len(self.ys) or len(self.xs) < 2:
            raise ValueError("calibration needs two equally long lists of at least 2 knots")
        if any(b <= a for a, b in zip(self.xs, self.xs[1:], strict=False)):
            raise ValueError("calibration xs must be strictly increasing")
        if any(b < a for a, b in zip(self.ys, self.ys[1:], strict=False)) or not all(0 <= y <= 1 for y in self.ys):
            raise ValueError("calibration ys must be non-decreasing and within [0, 1]")

    def __call__(self, raw: Tensor) -> Tensor:
        """The map as a sum of clamped ramps, one per segment: ``y0 + sum_i (y_i+1 - y_i) * clamp((x - x_i) /
        (x_i+1 - x_i), 0, 1)`` — the piecewise-linear interpolation with flat ends, in elementwise ops only, so
        it exports to ONNX as it runs here."""
        out = torch.full_like(raw, self.ys[0])
        for x0, x1, y0, y1 in zip(self.xs, self.xs[1:], self.ys, self.ys[1:], strict=False):
            if y1 != y0:
                out = out + (y1 - y0) * ((raw - x0) / (x1 - x0)).clamp(0.0, 1.0)
        return out


def face_shape(points: Tensor) -> tuple[Tensor, Tensor]:
    """``(..., K, 2)`` points -> the shape ``(..., 2K)``, centred on its tight box and in units of the box's longer
    side (at least 1), and that side ``(...,)``: what a :class:`Convention` regresses on, here and when fitted."""
    low, high = points.amin(dim=-2), points.amax(dim=-2)  # (..., 2)
    side = (high - low).amax(dim=-1).clamp_min(1.0)
    return ((points - (low + high)[..., None, :] / 2) / side[..., None, None]).flatten(-2), side


@dataclass(frozen=True)
class Convention:
    """An annotation convention: where one set of annotators puts each point relative to where the network finds
    it, applied to the decoded points (fitted on training faces by :mod:`training.conventions`).

    The network is trained on data sets whose annotators disagree by a fraction of a pixel, consistently (300-W's
    labels sit right of AFLW2000-3D's re-annotation of the same features), so it learns the average of their
    conventions and misses each. ``offsets`` ``(K, 2)`` is one source's mean residual (label - prediction) per point
    on its training faces, in units of the longer side of the face's tight landmark box; :meth:`__call__` adds it
    back, scaled by each face's predicted box, in the crop's frame. With ``mean`` ``(2K,)`` and ``matrix``
    ``(2K, 2K)`` the residual also depends linearly on the face's predicted shape (centred on its box, in box
    sides): ``offsets + (shape - mean) @ matrix``, a ridge fit on the same faces (where a convention differs with
    pose, e.g. the jaw contour of a turned face). A shape farther than ``radius`` (RMS distance from ``mean``, in
    box sides) from the faces it was fitted on gets the ``fallback`` convention instead, fitted on faces like it (the
    300-W convention's regression was fitted on near-frontal faces and would extrapolate on a face turned away; it
    falls back to AFLW2000-3D's, fitted on every pose). Stored in checkpoint metadata by name.
    """

    name: str
    offsets: tuple[tuple[float, float], ...]
    mean: tuple[float, ...] | None = None
    matrix: tuple[tuple[float, ...], ...] | None = None
    radius: float | None = None
    fallback: Convention | None = None

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """offsets, mean and matrix as float32 arrays, built once (arrays, not tensors: a tensor made while
        ``torch.onnx.export`` traces would be a tracing tensor, unusable after it)."""
        linear = self.mean is not None and self.matrix is not None
        return (
            np.asarray(self.offsets, dtype=np.float32),
            np.asarray(self.mean, dtype=np.float32) if linear else None,
            np.asarray(self.matrix, dtype=np.float32) if linear else None,
        )

    def __call__(self, points: Tensor) -> Tensor:
        """``(..., K, 2)`` points (any pixel unit, crop frame) -> the same in this convention."""
        centred, side = face_shape(points)
        offsets, mean, matrix = (
            None if a is None else torch.as_tensor(a, dtype=points.dtype, device=points.device) for a in self.arrays
        )
        assert offsets is not None
        residual = offsets.expand_as(points)
        if mean is None or matrix is None:
            return points + residual * side[..., None, None]
        shape = centred - mean
        moved = points + (residual + (shape @ matrix).reshape(points.shape)) * side[..., None, None]
        if self.radius is None or self.fallback is None:
            return moved
        inside = shape.square().mean(dim=-1).sqrt() <= self.radius  # (...,)
        return torch.where(inside[..., None, None], moved, self.fallback(points))


def encode(points: Tensor, size: int, sigma: float) -> Tensor:
    """Gaussian target heatmaps (eq. 2) at float centres, no rounding.

    Args:
        points: ``(..., K, 2)`` x, y in heatmap pixels; non-finite points give an all-zero map.
        size: heatmap side ``h = w``.
        sigma: standard deviation in heatmap pixels.

    Returns:
        ``(..., K, size, size)`` float32 with peak value 1 at a point that lies on a pixel centre.
    """
    points = points.float()
    grid = torch.arange(size, dtype=torch.float32, device=points.device)
    valid = torch.isfinite(points).all(dim=-1, keepdim=True)
    p = torch.where(valid, points, torch.full_like(points, -1e4))
    gx = torch.exp(-((grid - p[..., 0:1]) ** 2) / (2 * sigma**2))  # (..., K, w)
    gy = torch.exp(-((grid - p[..., 1:2]) ** 2) / (2 * sigma**2))  # (..., K, h)
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)


# Standard deviation (heatmap pixels) of the Gaussian that smooths a network heatmap before its peak is located
# (DARK's modulation, Zhang et al., CVPR 2020): network peaks are not clean Gaussians, and the log-parabola step on
# raw maps follows their pixel noise. Chosen on both datasets' val splits with `cpu-ft-noflip-l1-long`
# (annotation convention off, ground-truth boxes; `python -m benchmarks.decode_blur`, `benchmarks/results/
# decode.md`): AFLW2000-3D 2.847 -> 2.743 % and 300-W 3.559 -> 3.515 % at 1.0, the largest gain both sets share;
# more smoothing keeps helping AFLW2000-3D but gives 300-W's gain back (3.559 % again at 2.5).
# A checkpoint whose conventions and calibration were fitted on one decoder's output records its sigma
# (metadata ``decode_blur_sigma``) and is served with it; this value is for checkpoints without one.
DECODE_BLUR_SIGMA = 1.0


@functools.lru_cache(maxsize=16)
def _blur_matrix(sigma: float, size: int) -> np.ndarray:
    """``(size, size)`` banded matrix ``B`` with ``(B @ x)[i] = sum_j g(i - j) x[j]``: a 1-D Gaussian blur of radius
    ``ceil(2 sigma)``, taps normalised to sum 1, zeros beyond the edges."""
    radius = max(1, int(np.ceil(2 * sigma)))
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    offset = np.arange(size)[None, :] - np.arange(size)[:, None]  # j - i
    return np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0)


BlurMatrices = tuple[Tensor, Tensor]  # (rows B_h, columns B_w) of :func:`smooth`


def blur_matrices(sigma: float, h: int, w: int, device: torch.device | str = "cpu") -> BlurMatrices | None:
    """The float32 ``(B_h, B_w)`` that :func:`smooth` applies to ``(..., h, w)`` maps at ``sigma``, on ``device``;
    None for ``sigma`` 0 (no smoothing). An engine that replays its decode in a CUDA graph makes them once at load
    and passes them to :func:`decode`, so that the captured decode copies nothing from the host."""
    if sigma <= 0:
        return None
    with torch.inference_mode(False):  # plain tensors, usable outside inference mode too (export, training)
        rows, cols = (torch.tensor(_blur_matrix(sigma, n), dtype=torch.float32, device=device) for n in (h, w))
    return rows, cols


def smooth(heatmaps: Tensor, sigma: float, matrices: BlurMatrices | None = None) -> Tensor:
    """``(..., h, w)`` maps blurred by a separable Gaussian of ``sigma`` heatmap pixels (radius ``ceil(2 sigma)``,
    zeros beyond the edges), a linear filter that commutes with mirroring the maps; ``sigma`` 0 returns them
    unchanged. Two batched products with banded matrices, ``B_h @ x @ B_w.T``: on a CPU a 1-channel convolution
    per map cost 3.5 ms per face of 68 maps, the products 0.3 ms. ``matrices``: those products' matrices made by
    :func:`blur_matrices` for this ``sigma`` and map size, on the maps' device (default: made from the host on
    every call).

    Zeros beyond the edge pull a peak near it slightly inward (at sigma 1, a clean peak 2 px from the edge moves
    0.016 px, 1.5 px from it 0.05 px); replicating the edge instead moved the arg-max onto the border pixel, up to
    0.9 px."""
    if sigma <= 0:
        return heatmaps
    if matrices is None:
        h, w = heatmaps.shape[-2:]
        rows = torch.as_tensor(_blur_matrix(sigma, h), dtype=heatmaps.dtype, device=heatmaps.device)
        cols = torch.as_tensor(_blur_matrix(sigma, w), dtype=heatmaps.dtype, device=heatmaps.device)
    else:
        rows, cols = (m.to(heatmaps.dtype) for m in matrices)
    return rows @ heatmaps @ cols.T


def decode(
    heatmaps: Tensor, blur_sigma: float = DECODE_BLUR_SIGMA, matrices: BlurMatrices | None = None
) -> tuple[Tensor, Tensor]:
    """Sub-pixel peak location and peak height of each heatmap, batched, on the heatmaps' device.

    Each map is first smoothed by a small Gaussian (:data:`DECODE_BLUR_SIGMA`, :func:`smooth`); the integer
    arg-max (eq. 1) of the smoothed map is then refined by fitting a parabola to the log of the peak and its two
    neighbours along each axis. The log of a Gaussian is exactly quadratic, and a Gaussian blurred by a Gaussian is
    a Gaussian about the same centre, so this recovers the centre of a clean target to 0.001 px at least 4 px from
    the border (nearer, see :func:`smooth`); on network output the step is clamped to half a pixel. Peaks on the
    border are not refined along the axis that leaves the map.

    The peak height is the unsmoothed map's maximum, relative to the ideal target peak of 1, clipped to [0, 1];
    :func:`confidence` turns the peaks of both stages into the served per-point confidence.

    Args:
        heatmaps: ``(..., K, h, w)``.
        blur_sigma: the smoothing's standard deviation in heatmap pixels; 0 decodes the raw maps.
        matrices: the smoothing's matrices for ``blur_sigma`` (:func:`blur_matrices`), made once by a caller that
            must not copy from the host here (a CUDA graph's capture); default: made on every call.

    Returns:
        points ``(..., K, 2)`` float32 (x, y) in heatmap pixels; peak ``(..., K)`` float32 in [0, 1].
    """
    raw = heatmaps.float()
    *lead, h, w = raw.shape
    peak = raw.reshape(-1, h * w).amax(dim=1)
    flat = smooth(raw, blur_sigma, matrices).reshape(-1, h * w)
    idx = flat.argmax(dim=1)
    ys = torch.div(idx, w, rounding_mode="floor")
    xs = idx - ys * w

    def log_at(y: Tensor, x: Tensor) -> Tensor:
        value = flat.gather(1, (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).unsqueeze(1)).squeeze(1)
        return torch.log(value.clamp_min(1e-10))

    centre = log_at(ys, xs)

    def offset(lo: Tensor, hi: Tensor, inside: Tensor) -> Tensor:
        curvature = lo - 2 * centre + hi
        step = 0.5 * (lo - hi) / torch.where(curvature < 0, curvature, torch.full_like(curvature, -1.0))
        step = torch.where((curvature < 0) & inside, step, torch.zeros_like(step))
        return step.clamp(-0.5, 0.5)

    dx = offset(log_at(ys, xs - 1), log_at(ys, xs + 1), (xs > 0) & (xs < w - 1))
    dy = offset(log_at(ys - 1, xs), log_at(ys + 1, xs), (ys > 0) & (ys < h - 1))
    points = torch.stack([xs.float() + dx, ys.float() + dy], dim=-1).reshape(*lead, 2)
    return points, peak.clamp(0.0, 1.0).reshape(lead)


def peak_height(heatmaps: Tensor) -> Tensor:
    """``(..., K, h, w)`` -> ``(..., K)`` maximum of each map clipped to [0, 1], as :func:`decode` reports it."""
    return heatmaps.float().flatten(-2).amax(-1).clamp(0.0, 1.0)


def confidence(peak: Tensor, coarse_peak: Tensor, calibration: Calibration | None = None) -> Tensor:
    """Per-point confidence ``(..., K)`` from the peak heights of H_f and H0 of the same faces.

    The raw score is ``sqrt(s_k * mean_k s)`` with ``s_k = sqrt(peak_k * coarse_peak_k)``: a point is trusted when
    both stages put a clear peak on it and the face as a whole is clear (errors of one face are correlated: a bad
    crop or an occluded face moves all its points). Without fitted parameters this ranks points by error better
    than the refined peak alone (Spearman with the point error on the AFLW2000-3D val split: -0.54 vs -0.47 for
    the shipped weights; chosen on an earlier snapshot, where train and val agreed). ``calibration`` (fitted on
    this score, see :mod:`training.calibrate`) then maps it to the probability that the point is within tolerance.
    """
    per_point = torch.sqrt(peak.clamp(0.0, 1.0) * coarse_peak.clamp(0.0, 1.0))
    score = torch.sqrt(per_point * per_point.mean(dim=-1, keepdim=True))
    if calibration is not None:
        score = calibration(score).clamp(0.0, 1.0)
    return score

"""Training losses of the two-stage network: a heatmap loss on H_f and H0 — the paper's squared Euclidean
distance (eq. 9) or the Adaptive Wing loss with its weighted loss map (Wang et al., ICCV 2019) — and an optional L1
on the coordinates decoded from the refined heatmaps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn.functional import max_pool2d

from model.codec import decode
from model.network import Heatmaps

HeatmapLossName = Literal["l2", "awing"]


def heatmap_l2(pred: Tensor, target: Tensor) -> Tensor:
    """Sum of squared differences over (K, h, w), averaged over the batch (eq. 9), computed in float32."""
    return (pred.float() - target.float()).square().flatten(1).sum(1).mean()


def adaptive_wing(
    pred: Tensor,
    target: Tensor,
    alpha: float = 2.1,
    omega: float = 14.0,
    epsilon: float = 1.0,
    theta: float = 0.5,
    map_weight: float = 10.0,
) -> Tensor:
    """Adaptive Wing loss (Wang, Bo and Fuxin, ICCV 2019, eq. 6-8) with its weighted loss map, in float32; summed
    over (K, h, w) and averaged over the batch like :func:`heatmap_l2`.

    Near the target's foreground (``target`` >= 0.2, dilated by a 3×3 window: the loss map) the exponent
    ``alpha - y`` falls towards 1.1, so small errors there keep a large gradient — the sub-pixel precision a
    squared loss stops rewarding — while background pixels (y = 0) get an almost squared loss; errors of
    ``theta`` and more are penalised linearly. Foreground pixels weigh ``map_weight + 1``, background 1. The
    defaults are the paper's.
    """
    p, y = pred.float(), target.float()
    delta = (p - y).abs()
    power = alpha - y
    ratio = theta / epsilon
    a = omega / (1 + ratio**power) * power * ratio ** (power - 1) / epsilon
    c = theta * a - omega * torch.log1p(ratio**power)
    loss = torch.where(delta < theta, omega * torch.log1p((delta / epsilon) ** power), a * delta - c)
    flat = y.flatten(0, -3).unsqueeze(1)  # (B*K, 1, h, w)
    region = max_pool2d((flat >= 0.2).float(), 3, stride=1, padding=1).reshape(y.shape)
    return (loss * (map_weight * region + 1)).flatten(1).sum(1).mean()


def decoded_l1(pred: Tensor, points: Tensor) -> Tensor:
    """L1 distance (x + y, heatmap pixels) between the points the service decodes from ``pred`` and ``points``
    ``(B, K, 2)``, summed over the points, averaged over the batch. The decode is the served one
    (:func:`model.codec.decode`: a small Gaussian smoothing, arg-max, then a parabola through the log of the peak
    and its neighbours), whose sub-pixel step is differentiable in the heatmap values around the peak: it rewards
    exactly the sub-pixel precision that is served, which the heatmap L2 only rewards indirectly. (Runs before
    2026-12-07's round 5 decoded without the smoothing.)"""
    decoded, _ = decode(pred)
    valid = torch.isfinite(points).all(-1, keepdim=True)
    error = torch.where(valid, (decoded - points.float()).abs(), torch.zeros_like(decoded))
    return error.flatten(1).sum(1).mean()


@dataclass(frozen=True)
class TwoStageLoss:
    """L = D(H_f, target) + coarse_weight * D(H0, target) [+ coord_weight * L1(decode(H_f), points)], with D the
    heatmap loss named by ``heatmap`` (``"l2"``: eq. 9, the paper's; ``"awing"``: :func:`adaptive_wing`).

    The paper supervises the final map (eq. 9); supervising H0 as well (weight 0.5 by default) keeps stage 1 a
    heatmap detector in its own right, so H_f = H0 + H_DSC stays a correction and stage 1 can be reported. The
    optional coordinate term (:func:`decoded_l1`) is off by default (the paper's loss).
    """

    coarse_weight: float = 0.5
    coord_weight: float = 0.0
    heatmap: HeatmapLossName = "l2"

    @property
    def needs_points(self) -> bool:
        """Whether the loss reads the batch's point labels (the coordinate term is on)."""
        return self.coord_weight > 0

    def __call__(self, out: Heatmaps, target: Tensor, points: Tensor | None = None) -> Tensor:
        distance = adaptive_wing if self.heatmap == "awing" else heatmap_l2
        loss = distance(out.refined, target) + self.coarse_weight * distance(out.coarse, target)
        if self.needs_points and points is not None:
            loss = loss + self.coord_weight * decoded_l1(out.refined, points)
        return loss

"""Heatmap loss (eq. 9): squared Euclidean distance between predicted and target heatmaps, batch-averaged; and an
optional L1 on the coordinates decoded from the refined heatmaps."""

from __future__ import annotations

import torch
from torch import Tensor

from model.codec import decode
from model.network import Heatmaps


def heatmap_l2(pred: Tensor, target: Tensor) -> Tensor:
    """Sum of squared differences over (K, h, w), averaged over the batch (eq. 9), computed in float32."""
    return (pred.float() - target.float()).square().flatten(1).sum(1).mean()


def decoded_l1(pred: Tensor, points: Tensor) -> Tensor:
    """L1 distance (x + y, heatmap pixels) between the points the service decodes from ``pred`` and ``points``
    ``(B, K, 2)``, summed over the points, averaged over the batch. The decode is the served one
    (:func:`model.codec.decode`: arg-max, then a parabola through the log of the peak and its neighbours), whose
    sub-pixel step is differentiable in the five heatmap values around the peak: it rewards exactly the sub-pixel
    precision that is served, which the heatmap L2 only rewards indirectly."""
    decoded, _ = decode(pred)
    valid = torch.isfinite(points).all(-1, keepdim=True)
    error = torch.where(valid, (decoded - points.float()).abs(), torch.zeros_like(decoded))
    return error.flatten(1).sum(1).mean()


def two_stage_loss(
    out: Heatmaps, target: Tensor, coarse_weight: float, points: Tensor | None = None, coord_weight: float = 0.0
) -> Tensor:
    """L = L2(H_f, target) + coarse_weight * L2(H0, target) [+ coord_weight * L1(decode(H_f), points)].

    The paper supervises the final map (eq. 9); supervising H0 as well (weight 0.5 by default) keeps stage 1 a
    heatmap detector in its own right, so H_f = H0 + H_DSC stays a correction and stage 1 can be reported. The
    optional coordinate term (:func:`decoded_l1`) is off by default (the paper's loss).
    """
    loss = heatmap_l2(out.refined, target) + coarse_weight * heatmap_l2(out.coarse, target)
    if coord_weight and points is not None:
        loss = loss + coord_weight * decoded_l1(out.refined, points)
    return loss

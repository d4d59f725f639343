"""Heatmap loss (eq. 9): squared Euclidean distance between predicted and target heatmaps, batch-averaged."""

from __future__ import annotations

from torch import Tensor

from model.network import Heatmaps


def heatmap_l2(pred: Tensor, target: Tensor) -> Tensor:
    """Sum of squared differences over (K, h, w), averaged over the batch (eq. 9), computed in float32."""
    return (pred.float() - target.float()).square().flatten(1).sum(1).mean()


def two_stage_loss(out: Heatmaps, target: Tensor, coarse_weight: float) -> Tensor:
    """L = L2(H_f, target) + coarse_weight * L2(H0, target).

    The paper supervises the final map (eq. 9); supervising H0 as well (weight 0.5 by default) keeps stage 1 a
    heatmap detector in its own right, so H_f = H0 + H_DSC stays a correction and stage 1 can be reported.
    """
    return heatmap_l2(out.refined, target) + coarse_weight * heatmap_l2(out.coarse, target)

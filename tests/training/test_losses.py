"""The training losses: the coordinate term (zero on the targets, the served decode's error elsewhere, gradients
into the heatmaps) and the Adaptive Wing heatmap loss (zero on the target, continuous, foreground-weighted)."""

import torch

from model.codec import encode
from model.network import Heatmaps
from training.losses import TwoStageLoss, adaptive_wing, decoded_l1, heatmap_l2


def test_decoded_l1_is_the_served_decodes_error_and_has_gradients():
    points = torch.tensor([[[10.3, 12.7], [5.2, 20.1]]])
    assert decoded_l1(encode(points, 32, 1.5), points).item() < 1e-3  # the codec round-trips its own targets
    pred = encode(points + torch.tensor([0.2, -0.1]), 32, 1.5).requires_grad_(True)
    loss = decoded_l1(pred, points)
    assert abs(loss.item() - 2 * (0.2 + 0.1)) < 1e-3
    loss.backward()
    assert pred.grad is not None
    assert pred.grad.abs().sum() > 0
    missing = torch.tensor([[[10.3, 12.7], [float("nan"), float("nan")]]])
    assert torch.isfinite(decoded_l1(pred, missing))


def test_the_coordinate_term_is_off_by_default():
    points = torch.tensor([[[10.3, 12.7]]])
    target = encode(points, 32, 1.5)
    out = Heatmaps(coarse=target, refined=encode(points + 0.3, 32, 1.5))
    plain = TwoStageLoss()(out, target)
    assert plain == heatmap_l2(out.refined, target)  # the coarse map is the target here
    assert not TwoStageLoss().needs_points
    assert TwoStageLoss()(out, target, points) == plain
    assert TwoStageLoss(coord_weight=1.0)(out, target, points) > plain


def test_adaptive_wing_is_zero_on_the_target_continuous_and_weighs_the_foreground():
    points = torch.tensor([[[10.3, 12.7]]])
    target = encode(points, 32, 1.5)
    assert adaptive_wing(target, target).item() == 0
    # the two branches meet at |error| = theta (0.5): the loss changes little across it
    below = adaptive_wing(torch.full((1, 1, 4, 4), 0.4999), torch.zeros(1, 1, 4, 4))
    above = adaptive_wing(torch.full((1, 1, 4, 4), 0.5001), torch.zeros(1, 1, 4, 4))
    assert 0 < below.item() < above.item() < below.item() * 1.01
    # the same error weighs more on the face's peak (loss map, exponent alpha - y) than far away on background
    near, far = target.clone(), target.clone()
    near[0, 0, 13, 10] -= 0.1
    far[0, 0, 0, 0] += 0.1
    assert adaptive_wing(near, target) > 10 * adaptive_wing(far, target)
    pred = (target + 0.05).requires_grad_(True)
    TwoStageLoss(heatmap="awing")(Heatmaps(coarse=pred, refined=pred), target).backward()
    assert pred.grad is not None
    assert pred.grad.abs().sum() > 0

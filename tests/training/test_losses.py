"""The coordinate term: zero on the targets, the served decode's error elsewhere, gradients into the heatmaps."""

import torch

from model.codec import encode
from model.network import Heatmaps
from training.losses import decoded_l1, two_stage_loss


def test_decoded_l1_is_the_served_decodes_error_and_has_gradients():
    points = torch.tensor([[[10.3, 12.7], [5.2, 20.1]]])
    assert decoded_l1(encode(points, 32, 1.5), points).item() < 1e-4  # the codec round-trips its own targets
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
    plain = two_stage_loss(out, target, 0.5)
    assert two_stage_loss(out, target, 0.5, points, 0.0) == plain
    assert two_stage_loss(out, target, 0.5, points, 1.0) > plain

"""training.conventions: each convention's mean residual per point, in units of the predicted face's size."""

import numpy as np

from training.conventions import estimate

K = 68


def test_training_conventions_estimates_the_mean_residual_per_convention():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 100, (40, K, 2))
    side = (pred.max(1) - pred.min(1)).max(1)
    offsets = rng.normal(0, 0.01, (K, 2))
    gt = pred + offsets[None] * side[:, None, None]
    names = ["300w"] * 30 + ["aflw2000"] * 10
    fitted = estimate(pred, gt, names, min_faces=20)
    assert set(fitted) == {"300w"}  # 10 faces are too few
    np.testing.assert_allclose(fitted["300w"], offsets, atol=1e-12)

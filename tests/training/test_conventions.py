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


def test_a_shape_dependent_residual_is_fitted_and_the_engine_applies_it_as_fitted():
    """A residual that moves with the face's shape (as a turned face's jaw convention does) is recovered by the ridge
    fit, and model.codec.Convention applies the fit exactly as training.conventions measured it."""
    from training.conventions import apply, as_convention, fit_linear, shapes

    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, (K, 2))
    pred = (
        base[None] * rng.uniform(80, 120, (300, 1, 1)) + rng.normal(0, 2, (300, K, 2)) + rng.uniform(0, 50, (300, 1, 2))
    )
    x, side = shapes(pred)
    true = rng.normal(0, 0.05, (2 * K, 2 * K))
    gt = pred + (0.01 + (x - x.mean(0)) @ true).reshape(-1, K, 2) * side[:, None, None]
    intercept, mean, matrix = fit_linear(pred, gt, ridge=1e-6)
    convention = as_convention("x", intercept, (mean, matrix))
    np.testing.assert_allclose(apply(convention, pred), gt, atol=1e-3)  # float32 in the engine
    assert abs(np.abs(apply(as_convention("x", intercept), pred) - gt).mean()) > 0.1  # offsets alone miss it


def test_the_default_regression_is_gated_at_its_training_faces_99th_percentile():
    from training.conventions import as_convention, gate_default, shapes

    rng = np.random.default_rng(2)
    pred = rng.uniform(0, 100, (200, K, 2))
    x, _ = shapes(pred)
    linear = (x.mean(0), np.zeros((2 * K, 2 * K)))
    fitted = {
        "300w": as_convention("300w", np.zeros((K, 2)), linear),
        "aflw2000": as_convention("aflw2000", np.zeros((K, 2))),
    }
    gate = gate_default(fitted, "300w", pred, {"300w": 200, "aflw2000": 100})
    assert gate is not None
    assert gate["fallback"] == "aflw2000"
    distance = np.sqrt(((x - x.mean(0)) ** 2).mean(1))
    assert (distance <= gate["radius"]).mean() == 0.99
    assert gate_default(fitted, "aflw2000", pred, {"300w": 200, "aflw2000": 100}) is None  # no regression: no gate

import numpy as np
import torch

from training.calibrate import fit, reliability


def test_isotonic_fit_is_monotone_in_range_and_improves_reliability():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 5000)
    hit = (rng.uniform(0, 1, 5000) < raw**2).astype(float)  # raw over-states the hit rate
    calibration = fit(raw, hit, knots=16)
    assert len(calibration.xs) <= 16
    out = calibration(torch.from_numpy(np.linspace(-1, 2, 50))).numpy()
    assert (np.diff(out) >= -1e-12).all()
    assert out.min() >= 0
    assert out.max() <= 1
    _, ece_raw = reliability(raw, hit)
    _, ece_cal = reliability(calibration(torch.from_numpy(raw)).numpy(), hit)
    assert ece_cal < ece_raw / 3

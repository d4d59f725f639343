import pytest
import torch

from model.codec import Calibration, confidence, decode, encode, peak_height, smooth


def test_encode_decode_round_trip_is_sub_pixel():
    gen = torch.Generator().manual_seed(0)
    points = 2 + torch.rand(8, 68, 2, generator=gen) * 27  # non-integer, inside a 32x32 map
    heatmaps = encode(points, size=32, sigma=1.5)
    assert heatmaps.shape == (8, 68, 32, 32)
    decoded, confidence = decode(heatmaps)
    assert (decoded - points).abs().max() < 0.05
    assert ((confidence > 0.7) & (confidence <= 1.0)).all()


def test_smoothing_keeps_clean_centres_and_halves_the_error_on_noisy_peaks():
    gen = torch.Generator().manual_seed(1)
    points = 4 + torch.rand(32, 68, 2, generator=gen) * 23  # at least 4 px from the border of a 32x32 map
    clean = encode(points, size=32, sigma=1.5)
    assert (decode(clean)[0] - points).abs().max() < 1e-3
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=gen)
    raw_error = (decode(noisy, blur_sigma=0)[0] - points).norm(dim=-1).mean()
    smoothed_error = (decode(noisy)[0] - points).norm(dim=-1).mean()
    assert smoothed_error < 0.5 * raw_error
    torch.testing.assert_close(decode(noisy)[1], peak_height(noisy))  # the peak is the unsmoothed map's


def test_smooth_is_identity_at_zero_linear_and_keeps_mass_inside():
    hm = torch.zeros(1, 2, 9, 9)
    hm[0, 0, 4, 4] = 1.0
    hm[0, 1, 2, 3] = -1.0
    assert smooth(hm, 0) is hm
    blurred = smooth(hm, 1.0)
    assert blurred[0, 0].sum() == pytest.approx(1.0, abs=1e-6)  # the kernel sums to 1
    assert blurred[0, 0].argmax() == 4 * 9 + 4
    torch.testing.assert_close(smooth(hm.flip(-1), 1.0), blurred.flip(-1))  # mirroring commutes with it
    assert blurred[0, 1].sum() == pytest.approx(-1.0, abs=1e-6)  # linear: negative values are smoothed too


def test_smoothing_near_the_edge_pulls_inward_by_at_most_a_tenth_of_a_pixel():
    x = torch.linspace(1.5, 4.0, 11)
    points = torch.stack([x, torch.full_like(x, 16.0)], dim=-1)[None]  # (1, 11, 2) nearing the left edge
    error = decode(encode(points, size=32, sigma=1.5))[0][0, :, 0] - x
    assert (error >= -2e-4).all()  # inward (towards the centre) or exact to float precision
    assert error.max() < 0.1


def test_encode_peak_is_one_on_a_pixel_centre_and_has_no_rounding():
    hm = encode(torch.tensor([[[5.0, 7.0], [5.3, 7.0]]]), size=16, sigma=1.0)
    assert hm[0, 0, 7, 5] == pytest.approx(1.0)
    assert hm[0, 1, 7, 5] == pytest.approx(torch.exp(torch.tensor(-0.09 / 2)).item(), rel=1e-5)


def test_non_finite_points_give_empty_maps():
    hm = encode(torch.tensor([[float("nan"), 3.0]]), size=8, sigma=1.0)
    assert hm.abs().max() == 0


def test_decode_on_border_and_noise_stays_finite_and_in_range():
    hm = torch.randn(3, 68, 32, 32)
    hm[0, 0] = 0
    hm[0, 0, 0, 31] = 0.5
    points, confidence = decode(hm)
    assert torch.isfinite(points).all()
    assert (points >= -0.5).all()
    assert (points <= 31.5).all()
    assert ((confidence >= 0) & (confidence <= 1)).all()
    assert points[0, 0].tolist() == [31.0, 0.0]


def test_decode_keeps_device_and_leading_shape():
    hm = encode(torch.tensor([[[[4.2, 6.7]]]]), size=12, sigma=1.0)  # (1, 1, 1, 12, 12)
    points, confidence = decode(hm)
    assert points.shape == (1, 1, 1, 2)
    assert confidence.shape == (1, 1, 1)
    assert points.device == hm.device


def test_calibration_is_monotone_piecewise_linear_and_validated():
    cal = Calibration(xs=(0.0, 0.5, 1.0), ys=(0.0, 0.2, 0.9))
    out = cal(torch.tensor([-1.0, 0.25, 0.75, 2.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.1, 0.55, 0.9]))
    with pytest.raises(ValueError, match="increasing"):
        Calibration(xs=(0.0, 0.0), ys=(0.0, 1.0))
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration(xs=(0.0, 1.0), ys=(0.5, 0.1))


def test_confidence_is_the_peak_when_both_stages_and_all_points_agree():
    peak = torch.full((2, 68), 0.6)
    torch.testing.assert_close(confidence(peak, peak.clone()), peak)
    hm = encode(torch.tensor([[[4.0, 6.0]]]), size=12, sigma=1.0) * 0.7
    torch.testing.assert_close(peak_height(hm), decode(hm)[1])


def test_confidence_falls_with_a_weak_stage_1_peak_and_with_a_weak_face():
    peak = torch.full((2, 68), 0.8)
    coarse = peak.clone()
    coarse[0, 5] = 0.2  # stage 1 unsure about one point of face 0
    coarse[1] = 0.3  # stage 1 unsure about all of face 1
    conf = confidence(peak, coarse)
    assert conf.shape == (2, 68)
    assert conf[0, 5] < conf[0, 6] < 0.8
    assert (conf[1] < conf[0, 6]).all()
    assert ((conf >= 0) & (conf <= 1)).all()


def test_confidence_applies_the_calibration_last():
    peak = torch.tensor([[0.2, 0.9]])
    cal = Calibration(xs=(0.0, 1.0), ys=(0.0, 0.5))
    torch.testing.assert_close(confidence(peak, peak, cal), confidence(peak, peak) / 2)

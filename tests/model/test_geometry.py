import numpy as np
import pytest
import torch

from model.geometry import (
    box_from_points,
    crop_matrix,
    crop_to_heatmap,
    heatmap_to_crop,
    invert,
    transform_points,
    warp,
)
from model.inference import heatmap_to_image
from tests.conftest import mean_face


@pytest.mark.parametrize(("rotation", "scale", "flip"), [(0, 1, False), (33, 1.1, False), (-50, 0.8, True)])
def test_points_round_trip_to_crop_and_back(rotation, scale, flip):
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 1000, size=(68, 2)) + 0.37
    m = crop_matrix(box_from_points(points), 128, rotation_deg=rotation, scale=scale, flip=flip, shift=(0.05, -0.1))
    back = transform_points(invert(m), transform_points(m, points))
    assert np.abs(back - points).max() < 1e-4


def test_box_centre_goes_to_crop_centre_with_margin():
    box = np.array([10.0, 20.0, 110.0, 100.0])
    m = crop_matrix(box, 128, margin=0.25)
    centre = transform_points(m, np.array([[60.0, 60.0]]))[0]
    np.testing.assert_allclose(centre, [63.5, 63.5])
    # The longer side (100 px) plus 25 % fills the crop: 125 image px -> 128 crop px.
    left, right = transform_points(m, np.array([[10.0, 60.0], [110.0, 60.0]]))
    assert right[0] - left[0] == pytest.approx(100 * 128 / 125)


def test_warp_moves_pixels_where_points_go():
    # A smooth blob centred between pixels lands in the crop where transform_points sends its centre.
    yy, xx = np.mgrid[0:300, 0:300]
    blob = 255 * np.exp(-((xx - 170.3) ** 2 + (yy - 140.6) ** 2) / (2 * 3.0**2))
    image = np.repeat(blob[..., None], 3, axis=2).astype(np.uint8)
    m = crop_matrix(np.array([100.0, 100.0, 200.0, 200.0]), 128, rotation_deg=20.0)
    crop = warp(image, m, 128).astype(float)[..., 0]
    expected = transform_points(m, np.array([[170.3, 140.6]]))[0]
    ys, xs = np.mgrid[0:128, 0:128]
    found = np.array([(xs * crop).sum(), (ys * crop).sum()]) / crop.sum()
    assert np.abs(found - expected).max() < 0.1


def test_flip_matrix_mirrors_about_the_box_centre():
    face = mean_face(100, (200, 150))
    m = crop_matrix(box_from_points(face), 128, flip=True)
    plain = crop_matrix(box_from_points(face), 128)
    a = transform_points(m, face)
    b = transform_points(plain, face)
    np.testing.assert_allclose(a[:, 0], 127 - b[:, 0], atol=1e-9)
    np.testing.assert_allclose(a[:, 1], b[:, 1], atol=1e-9)


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_heatmap_crop_conversion_round_trip(stride):
    pts = torch.tensor([[0.0, 0.0], [3.25, 7.5]])
    back = crop_to_heatmap(heatmap_to_crop(pts, stride), stride)
    torch.testing.assert_close(back, pts)
    # A heatmap pixel is the centre of the stride x stride block it summarises.
    assert heatmap_to_crop(torch.tensor(0.0), 4).item() == 1.5


def test_heatmap_to_image_inverts_the_crop_in_batch():
    face = mean_face(180, (400, 300))
    m = crop_matrix(box_from_points(face), 128, rotation_deg=15)
    hm_pts = crop_to_heatmap(transform_points(m, face), 4)
    out = heatmap_to_image(torch.tensor(hm_pts, dtype=torch.float32)[None], torch.tensor(invert(m))[None], 4)
    assert np.abs(out[0].numpy() - face).max() < 1e-3


def test_box_from_points_ignores_non_finite():
    pts = np.array([[1.0, 2.0], [np.nan, 5.0], [3.0, 4.0]])
    np.testing.assert_array_equal(box_from_points(pts), [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="no finite"):
        box_from_points(np.full((3, 2), np.nan))

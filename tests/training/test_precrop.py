import cv2
import numpy as np
import pytest
import yaml

from model.geometry import box_from_points
from tests.conftest import draw_face
from tests.training.fixtures import make_aflw2000, make_pts_split
from training import precrop
from training.config import load_config
from training.datasets import load_image, load_samples


def test_cut_without_resize_is_an_exact_integer_shift():
    image, points = draw_face(160, 7)
    crop, moved = precrop.cut(image, points, face_px=1000, context=2.2)
    shift = points - moved
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)  # one integer offset for every point
    left, top = (int(v) for v in np.round(shift[0]))
    assert crop.shape[0] == crop.shape[1]
    for x, y in np.round(points).astype(int)[::7]:
        if 0 <= y - top < crop.shape[0] and 0 <= x - left < crop.shape[1]:
            assert (crop[y - top, x - left] == image[y, x]).all()


def test_cut_with_resize_scales_the_face_to_face_px():
    image, points = draw_face(400, 3)
    crop, moved = precrop.cut(image, points, face_px=64, context=2.0)
    x1, y1, x2, y2 = box_from_points(moved)
    assert max(x2 - x1, y2 - y1) == pytest.approx(64, abs=0.5)
    assert abs(crop.shape[0] - 128) <= 1
    # The points moved by one scale + offset, and the pixels moved with them: warping the original by that same
    # affine gives the same picture (up to area vs bilinear resampling).
    scale = np.polyfit(points[:, 0], moved[:, 0], 1)
    scale_y = np.polyfit(points[:, 1], moved[:, 1], 1)
    assert scale[0] == pytest.approx(scale_y[0], rel=0.01)
    matrix = np.array([[scale[0], 0, scale[1]], [0, scale_y[0], scale_y[1]]])
    direct = cv2.warpAffine(image, matrix, (crop.shape[1], crop.shape[0]))
    assert np.abs(direct.astype(int) - crop.astype(int)).mean() < 6
    shifted = cv2.warpAffine(image, matrix + [[0, 0, 4], [0, 0, 0]], (crop.shape[1], crop.shape[0]))
    assert np.abs(shifted.astype(int) - crop.astype(int)).mean() > np.abs(direct.astype(int) - crop.astype(int)).mean()


def test_precrop_writes_a_config_that_trains_on_the_crops(tmp_path):
    make_aflw2000(tmp_path / "aflw", count=5)
    make_pts_split(tmp_path / "w300", count=4)
    config = {
        "model": "cpu",
        "train": [
            {"name": "aflw", "format": "aflw2000", "root": str(tmp_path / "aflw"), "split": "train"},
            {"name": "w300", "format": "pts_folder", "root": str(tmp_path / "w300"), "split": "train", "weight": 2},
        ],
        "val": [
            {
                "name": "w300",
                "format": "pts_folder",
                "root": str(tmp_path / "w300"),
                "split": "val",
                "norm": "inter_ocular",
            }
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "cache"
    precrop.main(precrop.get_args_parser().parse_args(["--config", str(tmp_path / "c.yaml"), "--out", str(out)]))
    cfg = load_config(out / "config.yaml")
    assert [(s.format, s.key, s.weight) for s in cfg.train] == [
        ("pts_folder", "aflw", 1.0),
        ("pts_folder", "w300", 2.0),
    ]
    assert cfg.val[0].norm == "inter_ocular"
    samples = load_samples("pts_folder", out / "aflw", "train")
    assert len(samples) == 3
    assert samples[0].image.suffix == ".webp"
    image = load_image(samples[0].image)
    assert (samples[0].points >= 0).all()
    assert (samples[0].points < image.shape[0]).all()

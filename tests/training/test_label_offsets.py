"""Label offsets by source: antisymmetrising, the flip that carries them over, the offset report."""

import numpy as np
import pytest
import torch

from model.landmarks import MIRROR
from tests.conftest import mean_face, tiny_config
from tests.training.fixtures import make_aflw2000
from training.datasets import LandmarkDataset, read_aflw2000
from training.device_augment import DeviceAugmenter, FaceBank
from training.label_offsets import antisymmetric, estimate, flip_correction, load, mirror_offsets, offset_table, save
from training.transforms import Augmentation


def test_a_constant_x_shift_is_all_antisymmetric_and_y_is_not():
    shift = np.zeros((68, 2))
    shift[:, 0] = 0.8
    assert np.allclose(antisymmetric(shift), shift)
    lift = np.zeros((68, 2))
    lift[:, 1] = 0.5  # the same on both sides: a flip keeps it
    assert np.allclose(antisymmetric(lift), 0)
    assert np.allclose(mirror_offsets(mirror_offsets(shift)), shift)


def test_estimate_finds_each_sources_shift():
    rng = np.random.default_rng(0)
    gt = np.stack([mean_face(100, (200, 200)) + rng.normal(0, 1, (68, 2)) for _ in range(60)])
    pred = gt.copy()
    pred[:30, :, 0] -= 2.0  # source a: labels 2 px right of the predictions
    pred[30:, :, 0] += 1.0
    sources = ["a"] * 30 + ["b"] * 30
    offsets = estimate(pred, gt, sources)
    side = 100.0
    assert offsets["a"][:, 0].mean() == pytest.approx(2.0 / side, rel=0.05)
    assert offsets["b"][:, 0].mean() == pytest.approx(-1.0 / side, rel=0.05)
    table = offset_table(pred, gt, sources, "box")
    assert table["a"]["x_px"] == pytest.approx(-2.0)
    assert table["b"]["x_px"] == pytest.approx(1.0)
    assert abs(table["a"]["y_px"]) < 1e-9


def test_flip_correction_keeps_the_convention():
    """Labels 1 px right of a symmetric face's features: mirrored, they must still sit 1 px right."""
    truth = mean_face(100, (0, 0))
    d = np.zeros((68, 2))
    d[:, 0] = 1.0
    labels = truth + d
    flip = np.array([[-1.0, 0.0], [0.0, 1.0]])
    mirrored = (labels @ flip.T)[list(MIRROR)]  # what a plain flip teaches
    fixed = mirrored + flip_correction(d, flip, np.eye(2))
    assert np.allclose(fixed, (truth @ flip.T)[list(MIRROR)] + d)  # the mirrored face, labelled as its source does
    assert np.allclose(mirrored, (truth @ flip.T)[list(MIRROR)] - d)  # the plain flip: the offset reversed


def test_both_augmentation_paths_carry_the_offset(tmp_path):
    make_aflw2000(tmp_path, count=4)
    faces = read_aflw2000(tmp_path, "train")
    config = tiny_config()
    flip = Augmentation(rotation=0, scale=(1, 1), shift=0, margin_jitter=0, flip=1.0, brightness=0, contrast=0,
                        saturation=0, occlusion=0)  # fmt: skip
    offsets = np.zeros((len(faces), 68, 2))
    offsets[..., 0] = 3.0  # image pixels
    plain = LandmarkDataset(faces, config, flip, seed=1)
    carried = LandmarkDataset(faces, config, flip, seed=1, flip_offsets=offsets)
    for i in range(len(faces)):
        moved = carried[i]["points"] - plain[i]["points"]  # heatmap pixels
        scale = float(np.hypot(*carried[i]["matrix"][0, :2].numpy())) / config.heatmap_stride
        assert torch.allclose(moved[:, 0], torch.full((68,), 6.0 * scale), atol=1e-3)
        assert torch.allclose(moved[:, 1], torch.zeros(68), atol=1e-3)
    device = torch.device("cpu")
    index = torch.arange(len(faces))
    base = DeviceAugmenter(FaceBank.from_samples(faces, config, device), config, flip)
    held = DeviceAugmenter(FaceBank.from_samples(faces, config, device, offsets), config, flip)
    a = base.batch(index, torch.Generator().manual_seed(0))["points"]
    b = held.batch(index, torch.Generator().manual_seed(0))["points"]
    assert (b[..., 0] - a[..., 0]).min() > 0  # shifted right, as on the CPU path
    assert torch.allclose(b[..., 1], a[..., 1], atol=1e-4)


def test_offset_file_round_trip_and_errors(tmp_path):
    offsets = {"helen": np.full((68, 2), 0.01)}
    save(tmp_path / "o.json", offsets, {"model": "x"})
    assert np.allclose(load(tmp_path / "o.json")["helen"], 0.01)
    (tmp_path / "bad.json").write_text('{"sources": {"x": [[1, 2]]}}')
    with pytest.raises(ValueError, match="68 finite"):
        load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a label offset file"):
        load(tmp_path / "missing.json")

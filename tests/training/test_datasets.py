import sys

import numpy as np
import pytest

from model.landmarks import MIRROR
from tests.conftest import tiny_config
from tests.training.fixtures import make_300w, make_300w_lp, make_aflw2000, make_pts_split
from training import fit_detector
from training.datasets import (
    DataError,
    LandmarkDataset,
    MixtureSampler,
    load_image,
    load_samples,
    read_300w,
    read_300w_lp,
    read_aflw2000,
    read_pts,
    samples_from_spec,
    write_pts,
)


def test_pts_round_trip_and_one_based_convention(tmp_path):
    pts = np.array([[0.0, 0.0], [10.25, 3.5]])
    write_pts(tmp_path / "a.pts", pts)
    assert "1.000 1.000" in (tmp_path / "a.pts").read_text()  # the 300-W files are 1-based
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts"), pts)


@pytest.mark.parametrize(
    ("content", "message"),
    [("version: 1\nn_points: 3\n{\n1 2\n}\n", "header says 3"), ("garbage", "not a valid"), ("", "not a valid")],
)
def test_malformed_pts_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pts"
    path.write_text(content)
    with pytest.raises(DataError, match=f"bad.pts.*{message}"):
        read_pts(path)


def test_300w_protocol_subsets(tmp_path):
    make_300w(tmp_path, per_folder=2)
    assert len(read_300w(tmp_path, "common")) == 4
    assert len(read_300w(tmp_path, "challenging")) == 2
    assert len(read_300w(tmp_path, "full")) == 6
    train = read_300w(tmp_path, "train")
    assert len(train) == 6
    assert {s.subset for s in train} == {"lfpw/trainset", "helen/trainset", "afw"}


def test_aflw2000_both_label_sets_and_pose(tmp_path):
    truth = make_aflw2000(tmp_path, count=6)
    pts = read_aflw2000(tmp_path, "train", "pts")
    mat = read_aflw2000(tmp_path, "val", "mat")
    assert [s.name for s in pts] == [f"image{i:05d}" for i in range(4)]
    assert len(mat) == 2
    for s in pts + mat:
        np.testing.assert_allclose(s.points, truth[s.name], atol=1e-3)
    assert pts[0].yaw == pytest.approx(-80.0)


def test_300w_lp_with_flip_folders(tmp_path):
    truth = make_300w_lp(tmp_path)
    samples = read_300w_lp(tmp_path, subsets=("AFW",))
    assert len(samples) == 4
    plain = [s for s in samples if s.subset == "AFW"]
    flipped = [s for s in samples if s.subset == "AFW_Flip"]
    np.testing.assert_allclose(plain[0].points, truth[plain[0].name])
    # The flipped image's points are the mirrored points, re-indexed, and its yaw changes sign.
    expected = truth[flipped[0].name].copy()
    expected[:, 0] = 160 - 1 - expected[:, 0]
    np.testing.assert_allclose(flipped[0].points, expected[list(MIRROR)])
    assert flipped[0].yaw == pytest.approx(20.0)
    three_d = read_300w_lp(tmp_path, subsets=("AFW",), labels="pts_3d", flips=False)
    np.testing.assert_allclose(three_d[0].points, truth[three_d[0].name] + 0.5)


def test_missing_and_corrupt_files_are_named_or_skipped(tmp_path):
    make_aflw2000(tmp_path, count=6)
    (tmp_path / "images" / "image00001.pts").unlink()
    (tmp_path / "images" / "image00002.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="image00001.pts"):
        read_aflw2000(tmp_path, "train")
    kept = read_aflw2000(tmp_path, "train", skip_bad=True)
    assert [s.name for s in kept] == ["image00000", "image00003"]
    with pytest.raises(DataError, match="split file"):
        load_samples("aflw2000", tmp_path, "nope")


def test_broken_images_are_found_before_training(tmp_path):
    make_aflw2000(tmp_path, count=6)
    (tmp_path / "images" / "image00002.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match="image00002.jpg"):
        load_samples("aflw2000", tmp_path, "train")
    kept = load_samples("aflw2000", tmp_path, "train", skip_bad=True)
    assert [s.name for s in kept] == ["image00000", "image00001", "image00003"]


def test_unreadable_image_fails_with_its_name(tmp_path):
    make_aflw2000(tmp_path, count=3)
    (tmp_path / "images" / "image00000.jpg").write_bytes(b"\xff\xd8 broken")
    dataset = LandmarkDataset(read_aflw2000(tmp_path, "train"), tiny_config())
    with pytest.raises(DataError, match="image00000.jpg"):
        dataset[0]


def test_real_aflw2000_split_reads(aflw_dir):
    splits = {name: read_aflw2000(aflw_dir, name) for name in ("train", "val", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 1200, "val": 200, "test": 200}
    train, val, test = ({s.name for s in v} for v in splits.values())
    assert not train & val
    assert not train & test
    assert not val & test
    assert all(s.points.shape == (68, 2) and s.yaw is not None for s in splits["val"])


def test_pts_folder_with_split_files(tmp_path):
    truth = make_pts_split(tmp_path, count=5)
    train = load_samples("pts_folder", tmp_path, "train")
    val = load_samples("pts_folder", tmp_path, "val")
    assert [s.name for s in train] == ["helen_0", "helen_1", "helen_2"]
    assert [s.name for s in val] == ["helen_3", "helen_4"]
    np.testing.assert_allclose(val[0].points, truth["helen_3"], atol=1e-3)  # .pts keep 3 decimals
    (tmp_path / "images" / "helen_4.pts").unlink()
    with pytest.raises(DataError, match="helen_4.pts: missing"):
        load_samples("pts_folder", tmp_path, "val")


def test_real_300w_subset_split_reads(w300_dir):
    train = load_samples("pts_folder", w300_dir, "train")
    val = load_samples("pts_folder", w300_dir, "val")
    test = load_samples("pts_folder", w300_dir, "test")
    assert (len(train), len(val), len(test)) == (1606, 200, 200)  # version 2: split by photo
    photo = {"helen": lambda n: n.rsplit("_", 1)[0], "afw": lambda n: n.rsplit("_", 1)[0], "lfpw": lambda n: n}

    def photos(samples):  # helen_<photo>_<face>, afw_<photo>_<face>, lfpw_image_<n>: one photo each
        return {photo[s.name.split("_")[0]](s.name) for s in samples}

    assert not photos(train) & photos(val)
    assert not photos(train) & photos(test)
    assert not photos(val) & photos(test)
    assert {s.name.split("_")[0] for s in train} == {"afw", "helen", "lfpw"}
    for sample in val[:10]:
        h, w = load_image(sample.image).shape[:2]
        assert (sample.points >= -0.5).all()
        assert (sample.points[:, 0] <= w).all()
        assert (sample.points[:, 1] <= h).all()


def test_mixture_sampler_draws_each_set_by_its_weight():
    sampler = MixtureSampler([100, 10], [3.0, 1.0], num_samples=400, seed=1)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 400
    small = sum(i >= 100 for i in drawn)
    assert small == 100  # a quarter of the draws, from 10 samples: each one 10 times
    assert np.bincount(np.array(drawn)[np.array(drawn) >= 100] - 100).tolist() == [10] * 10
    assert np.bincount(drawn, minlength=100)[:100].tolist() == [3] * 100
    sampler.set_epoch(1)
    assert list(sampler) != drawn
    assert sorted(sampler) == sorted(drawn)


def test_mixture_sampler_splits_ranks_without_overlap():
    ranks = [MixtureSampler([7, 6], [1.0, 1.0], seed=3, rank=r, world_size=2) for r in range(2)]
    a, b = (list(s) for s in ranks)
    assert len(a) == len(b) == 6
    full = list(MixtureSampler([7, 6], [1.0, 1.0], seed=3))
    assert a == full[0:12:2]
    assert b == full[1:12:2]
    with pytest.raises(ValueError, match="positive weight"):
        MixtureSampler([5, 0], [1.0, 1.0])


@pytest.mark.parametrize("spec", ["pts_folder:/data", "pts_folder", ":/data:val", "a:b:c:d:e"])
def test_a_malformed_dataset_spec_is_a_data_error_naming_the_form(spec):
    with pytest.raises(DataError, match="expected FORMAT:ROOT:SPLIT"):
        samples_from_spec(spec)


def test_fit_detector_reports_a_bad_spec_in_one_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["fit_detector", "--sets", "pts_folder:/nowhere"])
    with pytest.raises(SystemExit) as exit_info:
        fit_detector.cli()
    assert str(exit_info.value).startswith("fit_detector: 'pts_folder:/nowhere': expected FORMAT:ROOT:SPLIT")

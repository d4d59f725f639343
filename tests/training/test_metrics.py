import numpy as np
import pytest

from tests.conftest import mean_face
from training.metrics import auc, box_size, ced, failure_rate, inter_ocular, inter_pupil, nme, summarise, yaw_table


def test_nme_by_hand():
    gt = mean_face(100)[None]
    pred = gt + np.array([3.0, 4.0])  # every point off by 5 px
    d = inter_ocular(gt)
    assert d[0] == pytest.approx(np.linalg.norm(gt[0, 36] - gt[0, 45]))
    assert nme(pred, gt, d)[0] == pytest.approx(5.0 / d[0])
    assert nme(pred, gt, np.array([50.0]))[0] == pytest.approx(0.1)


def test_normalisations():
    gt = np.zeros((1, 68, 2))
    gt[0, :, 0] = np.linspace(0, 40, 68)
    gt[0, :, 1] = np.linspace(0, 10, 68)
    assert box_size(gt)[0] == pytest.approx(20.0)
    face = mean_face(100)[None]
    assert inter_pupil(face)[0] == pytest.approx(40.0)  # eye centres at x = -0.2 and 0.2 of the face size


def test_ced_auc_and_failures():
    errors = np.array([0.01, 0.02, 0.05, 0.2])
    x, y = ced(errors, 0.1, 11)
    assert y[0] == 0.0
    assert y[-1] == 0.75
    assert failure_rate(errors, 0.07) == 0.25
    assert auc(np.zeros(10)) == pytest.approx(1.0)
    assert auc(np.full(10, 0.5)) == 0.0
    assert summarise(errors)["nme_mean"] == pytest.approx(7.0)


def test_yaw_bins_and_balanced_mean():
    errors = np.array([0.02, 0.04, 0.06, 0.08])
    yaw = np.array([10.0, -20.0, 45.0, -93.0])  # AFLW2000-3D has a few poses beyond 90 degrees
    table = yaw_table(errors, yaw)
    assert table["[0,30)"] == pytest.approx(3.0)
    assert table["[30,60)"] == pytest.approx(6.0)
    assert table["[60,90]"] == pytest.approx(8.0)
    assert table["balanced_mean"] == pytest.approx(17.0 / 3)


def test_the_landmark_group_table_splits_the_error_where_it_is():
    from training.evaluate import REGIONS, group_table

    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (4, 68, 2))
    pred = gt.copy()
    pred[:, list(REGIONS["jaw"]), 0] += 3.0  # only the jaw is off, by 3 px
    table = group_table(pred, gt)
    assert sorted(sum((list(v) for v in REGIONS.values()), [])) == list(range(68))  # every point, once
    assert table["box"]["jaw"] > 0
    assert all(table[norm][g] == 0 for norm in table for g in REGIONS if g != "jaw")
    box = np.sqrt(np.prod(gt.max(1) - gt.min(1), axis=1))
    assert table["box"]["jaw"] == pytest.approx(100 * float(np.mean(3.0 / box)))

"""Head pose: the angles' signs and axes on synthetic rotations, honest refusals, the shipped head model."""

import math

import numpy as np
import pytest

from model.pose import (
    DEFAULT_HEAD_MODEL,
    HeadModel,
    PoseOptions,
    angles,
    axes_2d,
    estimate_pose,
    project,
    rotation,
)


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return HeadModel.load(DEFAULT_HEAD_MODEL)


def geometric(head: HeadModel) -> HeadModel:
    return HeadModel(head.mean, head.modes, head.weights)


def face_at(head: HeadModel, yaw: float, pitch: float, roll: float, scale: float = 120.0) -> np.ndarray:
    r = rotation(math.radians(pitch), math.radians(yaw), math.radians(roll))
    return project(head.mean, r, scale, np.array([320.0, 240.0]))


@pytest.mark.parametrize(
    ("pitch", "yaw", "roll"), [(0.3, -0.7, 0.2), (-1.0, 0.4, -2.5), (0.0, 1.4, 0.0), (0.5, 0.5, 0.5)]
)
def test_angles_invert_rotation(pitch, yaw, roll):
    assert np.allclose(angles(rotation(pitch, yaw, roll)), (pitch, yaw, roll), atol=1e-9)


@pytest.mark.parametrize(
    ("yaw", "pitch", "roll"), [(0, 0, 0), (35, 0, 0), (-60, 10, 5), (0, 25, 0), (0, -20, 0), (0, 0, 30), (20, -15, -25)]
)
def test_synthetic_rotations_come_back(head, yaw, pitch, roll):
    fit = estimate_pose(face_at(head, yaw, pitch, roll), None, geometric(head))
    assert fit.pose is not None, fit.reason
    assert fit.pose.yaw == pytest.approx(yaw, abs=0.5)
    assert fit.pose.pitch == pytest.approx(pitch, abs=0.5)
    assert fit.pose.roll == pytest.approx(roll, abs=0.5)
    assert fit.pose.confidence > 0.9


def test_signs_as_seen_in_the_image(head):
    """Yaw > 0 turns the nose to the image's left, pitch > 0 lifts it, roll > 0 turns the face clockwise."""
    nose, eyes = 30, (36, 45)
    front = face_at(head, 0, 0, 0)
    assert face_at(head, 30, 0, 0)[nose, 0] < front[nose, 0] - 10
    assert face_at(head, 0, 20, 0)[nose, 1] < front[nose, 1] - 5  # image y grows downwards
    tilted = face_at(head, 0, 0, 20)
    assert tilted[eyes[1], 1] > tilted[eyes[0], 1] + 10  # the image-right eye drops: clockwise


def test_axes_point_where_the_face_looks(head):
    fit = estimate_pose(face_at(head, 40, 0, 0), None, geometric(head))
    ends = axes_2d(fit, 100.0)
    assert ends is not None
    origin, x_end, y_end, z_end = ends
    assert z_end[0] < origin[0] - 50  # facing the image's left
    assert y_end[1] < origin[1] - 90  # up is up


def test_confidences_weight_and_refuse(head):
    points = face_at(head, 10, 5, 0)
    low = np.full(68, 0.1)
    fit = estimate_pose(points, low, head)
    assert fit.pose is None
    assert "too few confident points" in (fit.reason or "")
    outliers = points.copy()
    outliers[:17] += 40.0  # the jaw slid away
    conf = np.ones(68)
    conf[:17] = 0.0  # ... and says so
    fit = estimate_pose(outliers, conf, geometric(head))
    assert fit.pose is not None
    assert fit.pose.yaw == pytest.approx(10, abs=1.0)
    assert fit.pose.confidence == pytest.approx(51 / 68)  # the mean of the points' confidences


def test_pose_confidence_is_the_points_and_the_residual_is_kept(head):
    points = face_at(head, -20, 10, 5)
    clean = estimate_pose(points, np.full(68, 0.8), geometric(head))
    assert clean.pose is not None
    assert clean.residual is not None
    assert clean.pose.confidence == pytest.approx(0.8)
    assert clean.residual < 1e-6  # the model's own projection fits exactly
    conf = np.full(68, 0.8)
    conf[3] = np.nan  # a point without a confidence counts 0, and the answer stays finite
    jittered = points + np.random.default_rng(0).normal(0, 2.0, points.shape)
    noisy = estimate_pose(jittered, conf, geometric(head))
    assert noisy.pose is not None
    assert noisy.residual is not None
    assert noisy.pose.confidence == pytest.approx(0.8 * 67 / 68)
    assert noisy.residual > clean.residual


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        (np.stack([np.linspace(0, 100, 68), np.linspace(0, 50, 68)], 1), "degenerate"),
        (np.zeros((68, 2)), "degenerate"),
        (np.full((68, 2), np.nan), "too few confident points"),
        (np.zeros((5, 2)), "needs 68 points"),
    ],
)
def test_degenerate_points_get_no_pose_and_a_reason(head, points, reason):
    fit = estimate_pose(points, None, head)
    assert fit.pose is None
    assert reason in (fit.reason or "")


def test_absurd_coordinates_give_a_reason_not_an_exception(head):
    points = np.full((68, 2), 1e300)
    points[::2] *= -1
    fit = estimate_pose(points, None, head)
    assert fit.pose is None
    assert fit.reason


def test_random_points_are_a_poor_fit(head):
    rng = np.random.default_rng(0)
    fit = estimate_pose(rng.uniform(0, 200, (68, 2)), None, head)
    assert fit.pose is None
    assert fit.reason is not None


def test_head_model_round_trip(head, tmp_path):
    path = tmp_path / "head.npz"
    head.save(path)
    again = HeadModel.load(path)
    assert np.allclose(again.mean, head.mean, atol=1e-6)
    assert (again.correction is None) == (head.correction is None)
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:200])  # a zip cut short
    for bad in ("bad.npz", "cut.npz", "missing.npz"):
        with pytest.raises(ValueError, match="not a head model"):
            HeadModel.load(tmp_path / bad)


def test_options_bound_the_refusals(head):
    points = face_at(head, 0, 0, 0)
    assert estimate_pose(points, None, head, PoseOptions(min_points=69)).pose is None

import math

import numpy as np
import pytest

from model.geometry import box_from_points, transform_points
from model.landmarks import LEFT_EYE, RIGHT_EYE
from model.pipeline import eye_roll, face_crop, refine, upright_box
from tests.conftest import mean_face


def rotate(points: np.ndarray, degrees: float, centre: tuple[float, float]) -> np.ndarray:
    a = math.radians(degrees)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])  # y down: turns clockwise on screen
    return (points - centre) @ r.T + centre


def test_eye_roll_measures_the_eye_line():
    face = mean_face(100, (200, 200))
    assert eye_roll(face) == pytest.approx(0, abs=1e-6)
    assert eye_roll(rotate(face, 20, (200, 200))) == pytest.approx(20)
    assert eye_roll(rotate(face, -35, (200, 200))) == pytest.approx(-35)


def test_an_aligned_crop_puts_the_eyes_level_and_the_face_at_its_centre():
    face = rotate(mean_face(100, (200, 160)), 25, (200, 160))
    image = np.zeros((400, 400, 3), np.uint8)
    framing = refine(face, aligned=True)
    assert framing.roll == pytest.approx(25)
    crop, inverse = face_crop(image, framing, 128)
    assert crop.shape == (128, 128, 3)
    forward = np.linalg.inv(np.vstack([inverse, [0, 0, 1]]))[:2]
    in_crop = transform_points(forward, face)
    right, left = in_crop[list(RIGHT_EYE)].mean(0), in_crop[list(LEFT_EYE)].mean(0)
    assert right[1] == pytest.approx(left[1], abs=1e-6)
    x1, y1, x2, y2 = box_from_points(in_crop)
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((63.5, 63.5), abs=1e-6)
    assert max(x2 - x1, y2 - y1) == pytest.approx(128 / 1.25, rel=1e-6)  # the upright face fills the usual margin


def test_unaligned_refinement_is_the_tight_box():
    face = rotate(mean_face(80, (100, 120)), 15, (100, 120))
    framing = refine(face, aligned=False)
    assert framing.roll == 0.0
    np.testing.assert_allclose(framing.box, box_from_points(face))
    np.testing.assert_allclose(upright_box(face, 0.0), box_from_points(face))
    with pytest.raises(ValueError, match="no finite landmark"):
        upright_box(np.full((68, 2), np.nan), 0.0)

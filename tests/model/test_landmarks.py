import numpy as np

from model.landmarks import MIRROR, NUM_LANDMARKS, OUTER_EYE_CORNERS
from tests.conftest import mean_face


def test_mirror_is_an_involution_and_a_permutation():
    assert sorted(MIRROR) == list(range(NUM_LANDMARKS))
    assert all(MIRROR[MIRROR[i]] == i for i in range(NUM_LANDMARKS))


def test_mirroring_a_symmetric_face_maps_it_onto_itself():
    face = mean_face()
    flipped = face * [-1.0, 1.0]
    np.testing.assert_allclose(flipped[list(MIRROR)], face, atol=1e-9)


def test_midline_points_are_fixed():
    assert [i for i in range(NUM_LANDMARKS) if MIRROR[i] == i] == [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    assert MIRROR[OUTER_EYE_CORNERS[0]] == OUTER_EYE_CORNERS[1]

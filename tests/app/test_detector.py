import cv2
import numpy as np
import pytest

from app.detector import BOX_MAPS, BoxMap, Detection, HaarDetector, match_detection
from training.datasets import read_aflw2000


def test_box_map_offsets_and_mirrors():
    m = BoxMap(dx=0.1, dy=0.2, sw=0.5, sh=0.5)
    x1, y1, x2, y2 = m.apply(0, 0, 101, 101)
    assert (x1 + x2) / 2 == pytest.approx(50 + 10.1)
    assert (y1 + y2) / 2 == pytest.approx(50 + 20.2)
    assert x2 - x1 == pytest.approx(50.5)
    x1m, _, x2m, _ = m.apply(0, 0, 101, 101, mirrored=True)
    assert (x1m + x2m) / 2 == pytest.approx(50 - 10.1)


def test_blank_and_grey_images_have_no_faces():
    detector = HaarDetector()
    assert detector(np.zeros((200, 300, 3), np.uint8)) == []
    assert detector(np.full((50, 60), 128, np.uint8)) == []


def test_match_detection_picks_the_face_inside_the_truth_box():
    dets = [Detection((0, 0, 10, 10), 0.9, "frontal"), Detection((40, 40, 90, 100), 0.6, "frontal")]
    found = match_detection(dets, np.array([35.0, 35.0, 95.0, 105.0]))
    assert found is not None
    assert found.box == (40, 40, 90, 100)
    assert match_detection(dets, np.array([200.0, 200.0, 300.0, 300.0])) is None


def test_real_frontal_faces_are_found_and_mapped_close_to_the_landmark_box(aflw_dir):
    detector = HaarDetector()
    samples = [s for s in read_aflw2000(aflw_dir, "val") if s.yaw is not None and abs(s.yaw) < 15][:10]
    found = 0
    for s in samples:
        truth = np.array([*s.points.min(0), *s.points.max(0)])
        det = match_detection(detector(cv2.imread(str(s.image))[:, :, ::-1]), truth)
        if det is None:
            continue
        found += 1
        side = np.sqrt((truth[2] - truth[0]) * (truth[3] - truth[1]))
        centre_error = np.hypot(
            (det.box[0] + det.box[2] - truth[0] - truth[2]) / 2, (det.box[1] + det.box[3] - truth[1] - truth[3]) / 2
        )
        assert centre_error < 0.25 * side
    assert found >= 7
    assert set(BOX_MAPS) == {"frontal", "profile"}

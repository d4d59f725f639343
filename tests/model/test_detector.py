import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.detector import YUNET_PATH, BoxMap, Detection, DetectorError, YuNetDetector, match_detection
from model.geometry import box_from_points
from training.datasets import load_image, load_samples

PORTRAIT = Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg"


@pytest.fixture(scope="module")
def detector() -> YuNetDetector:
    return YuNetDetector()


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return load_image(PORTRAIT)


def test_box_map_moves_the_centre_and_scales_the_sides():
    x1, y1, x2, y2 = BoxMap(dx=0.1, dy=0.2, sw=0.5, sh=0.8).apply(0, 0, 100, 100)
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((60, 70))
    assert (x2 - x1, y2 - y1) == pytest.approx((50, 80))


def test_the_bundled_portrait_gives_one_upright_face_with_five_points(detector, portrait):
    faces = detector(portrait)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.8
    x1, y1, x2, y2 = face.box
    assert 150 < x1 < x2 < 300  # the face, not the suit or the flag
    assert 60 < y1 < y2 < 200
    right_eye, left_eye, nose, *_ = face.points
    assert right_eye[0] < nose[0] < left_eye[0]  # the subject's right eye is on the image's left
    assert abs(face.roll) < 10


def test_grey_blank_and_tiny_inputs_have_no_faces(detector, portrait):
    assert detector(np.zeros((200, 300, 3), np.uint8)) == []
    assert detector(np.full((50, 60), 128, np.uint8)) == []
    grey = cv2.cvtColor(portrait, cv2.COLOR_RGB2GRAY)
    assert len(detector(grey)) == 1
    assert YuNetDetector(min_face_px=400)(portrait) == []


def test_group_photo_faces_come_largest_first_and_roll_follows_the_eyes(detector, portrait):
    face = portrait[50:230, 140:310]
    canvas = np.full((480, 900, 3), 90, np.uint8)
    canvas[20:200, 40:210] = face
    big = cv2.resize(face, None, fx=1.6, fy=1.6)
    canvas[150 : 150 + big.shape[0], 320 : 320 + big.shape[1]] = big
    canvas[300:390, 700:785] = cv2.resize(face, (85, 90))
    faces = detector(canvas)
    assert len(faces) == 3
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    assert areas == sorted(areas, reverse=True)
    assert 320 < faces[0].box[0] < 600  # the enlarged copy


def test_roll_is_the_eye_line_angle_and_yunet_underestimates_it(detector, portrait):
    eyes = ((10.0, 10.0), (20.0, 20.0), (15.0, 25.0), (12.0, 30.0), (18.0, 30.0))
    assert Detection((0, 0, 30, 30), 0.9, eyes).roll == pytest.approx(45)
    assert Detection((0, 0, 30, 30), 0.9).roll == 0.0
    # YuNet's points follow a turned face only part of the way (its training faces are mostly upright): a face
    # turned 25 degrees clockwise reads as a few degrees, with the right sign. Hence README: crops are not aligned
    # on them.
    turned = cv2.warpAffine(portrait, cv2.getRotationMatrix2D((224, 130), -25, 1.0), (512, 512))
    (rolled,) = detector(turned)
    assert 2 < rolled.roll < 25


def test_a_missing_or_altered_model_is_refused_with_its_name(tmp_path):
    with pytest.raises(DetectorError, match="nope.onnx does not exist"):
        YuNetDetector(model_path=tmp_path / "nope.onnx")
    altered = tmp_path / "yunet.onnx"
    shutil.copy(YUNET_PATH, altered)
    with altered.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(DetectorError, match="yunet.onnx has sha256"):
        YuNetDetector(model_path=altered)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DetectorError, match="junk.onnx cannot be loaded"):
        YuNetDetector(model_path=tmp_path / "junk.onnx", sha256=None)


def test_match_detection_picks_the_face_inside_the_truth_box():
    dets = [Detection((0, 0, 10, 10), 0.9), Detection((40, 40, 90, 100), 0.6)]
    found = match_detection(dets, np.array([35.0, 35.0, 95.0, 105.0]))
    assert found is not None
    assert found.box == (40, 40, 90, 100)
    assert match_detection(dets, np.array([200.0, 200.0, 300.0, 300.0])) is None


@pytest.mark.parametrize(
    ("fmt", "root_name", "labels"), [("aflw2000", "aflw2000-3d", "pts"), ("pts_folder", "300w-subset", None)]
)
def test_recall_on_the_real_val_splits_is_at_least_97_percent(detector, aflw_dir, fmt, root_name, labels):
    root = aflw_dir.parent / root_name
    if not (root / "val.txt").is_file():
        pytest.skip(f"{root} not present")
    samples = load_samples(fmt, root, "val", labels)
    found = [match_detection(detector(load_image(s.image)), box_from_points(s.points)) for s in samples]
    assert sum(f is not None for f in found) / len(samples) >= 0.97

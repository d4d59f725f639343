"""The shipped checkpoint on a real AFLW2000-3D val face (skipped when the checkpoint or the data is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.settings import DEFAULT_CHECKPOINT
from tests.app.conftest import open_client
from training.datasets import read_aflw2000
from training.metrics import box_size, nme


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_real_face_within_10_percent_box_nme(aflw_dir):
    samples = read_aflw2000(aflw_dir, "val")[:5]
    with open_client(DEFAULT_CHECKPOINT) as client:
        errors = []
        for sample in samples:
            box = [*sample.points.min(0), *sample.points.max(0)]
            response = client.post(
                "/landmarks",
                files={"image": ("f.jpg", sample.image.read_bytes(), "image/jpeg")},
                data={"boxes": json.dumps([box])},
            )
            assert response.status_code == 200
            pred = np.array(response.json()["faces"][0]["landmarks"])[None]
            errors.append(nme(pred, sample.points[None], box_size(sample.points[None]))[0])
        assert np.median(errors) < 0.10, errors


ASTRONAUT = Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg"


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_public_domain_portrait_gets_one_plausible_face():
    with open_client(DEFAULT_CHECKPOINT) as client:
        response = client.post("/landmarks", files={"image": ("a.jpg", ASTRONAUT.read_bytes(), "image/jpeg")})
    assert response.status_code == 200
    faces = response.json()["faces"]
    assert len(faces) == 1
    face = faces[0]
    pts = np.array(face["landmarks"])
    x1, y1, x2, y2 = face["box"]
    assert 150 < (x1 + x2) / 2 < 300  # the face is in the upper middle of the 512 x 512 portrait
    assert 60 < (y1 + y2) / 2 < 200
    right_eye, left_eye = pts[36:42].mean(0), pts[42:48].mean(0)
    nose_tip, mouth = pts[30], pts[48:68].mean(0)
    assert right_eye[0] < nose_tip[0] < left_eye[0]  # the subject's right eye is on the image's left
    assert max(right_eye[1], left_eye[1]) < nose_tip[1] < mouth[1] < pts[8][1]  # eyes, nose, mouth, chin
    assert face["score"] > 0.3

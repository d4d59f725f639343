"""The shipped checkpoint on a real AFLW2000-3D val face (skipped when the checkpoint or the data is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.artifacts import SHIPPED_CHECKPOINT
from tests.app.conftest import open_client, png_bytes
from training.datasets import read_aflw2000
from training.metrics import box_size, nme


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_real_face_within_10_percent_box_nme(aflw_dir):
    samples = read_aflw2000(aflw_dir, "val")[:5]
    with open_client(SHIPPED_CHECKPOINT) as client:
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


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_public_domain_portrait_gets_one_plausible_face():
    with open_client(SHIPPED_CHECKPOINT) as client:
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
    pose = face["pose"]  # a near-frontal, upright portrait, turned a little to the image's right
    assert pose is not None, face["pose_reason"]
    assert face["pose_reason"] is None
    assert abs(pose["yaw"]) < 25
    assert abs(pose["pitch"]) < 25
    assert abs(pose["roll"]) < 15
    assert 0 < pose["confidence"] <= 1


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_a_mirrored_portrait_turns_the_other_way():
    """The pose's signs follow the picture: mirrored, yaw and roll change sign, pitch stays."""
    image = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    poses = []
    with open_client(SHIPPED_CHECKPOINT) as client:
        for pixels in (image, image[:, ::-1]):
            response = client.post("/landmarks", files={"image": ("a.png", png_bytes(np.ascontiguousarray(pixels)))})
            poses.append(response.json()["faces"][0]["pose"])
    straight, mirrored = poses
    assert mirrored["yaw"] == pytest.approx(-straight["yaw"], abs=4)
    assert mirrored["roll"] == pytest.approx(-straight["roll"], abs=3)
    assert mirrored["pitch"] == pytest.approx(straight["pitch"], abs=3)


def group_photo() -> np.ndarray:
    """Three copies of the portrait's face at different sizes on one canvas."""
    face = np.asarray(Image.open(ASTRONAUT).convert("RGB"))[50:230, 140:310]
    canvas = np.full((480, 900, 3), 90, np.uint8)
    canvas[20:200, 40:210] = face
    big = np.asarray(Image.fromarray(face).resize((272, 288)))
    canvas[150:438, 320:592] = big
    canvas[300:390, 700:785] = np.asarray(Image.fromarray(face).resize((85, 90)))
    return canvas


@pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_group_photo_returns_every_face_largest_first_capped_by_max_faces():
    data = png_bytes(group_photo())
    with open_client(SHIPPED_CHECKPOINT) as client:
        every = client.post("/landmarks", files={"image": ("g.png", data, "image/png")})
        two = client.post("/landmarks", files={"image": ("g.png", data, "image/png")}, data={"max_faces": "2"})
    assert every.status_code == two.status_code == 200
    faces = every.json()["faces"]
    assert len(faces) == 3
    widths = [f["box"][2] - f["box"][0] for f in faces]
    assert widths == sorted(widths, reverse=True)
    assert 320 < faces[0]["box"][0] < 592  # the enlarged copy comes first
    for face in faces:  # each face's landmarks lie on its own copy
        x1, y1, x2, y2 = face["box"]
        assert np.all(
            (np.array(face["landmarks"]) >= [x1 - 5, y1 - 5]) & (np.array(face["landmarks"]) <= [x2 + 5, y2 + 5])
        )
    assert [f["box"] for f in two.json()["faces"]] == [f["box"] for f in faces[:2]]

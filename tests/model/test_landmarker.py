"""The library call: ``model.Landmarker`` gives the service's answer, takes every image form, runs the README."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import model
from model.artifacts import SHIPPED_CHECKPOINT
from model.engine import EngineOptions
from model.geometry import box_from_points
from model.imaging import ImageError
from model.landmarker import read_image
from model.pipeline import PipelineOptions
from tests.app.conftest import open_client, png_bytes

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "tests" / "data" / "astronaut.jpg"
needs_checkpoint = pytest.mark.skipif(not SHIPPED_CHECKPOINT.is_file(), reason="no shipped checkpoint")


@needs_checkpoint
def test_landmarker_equals_the_service_on_the_portrait():
    landmarker = model.Landmarker.load(engine=EngineOptions(device="cpu", precision="fp32"))
    result = landmarker(ASTRONAUT)
    with open_client(SHIPPED_CHECKPOINT, precision="fp32") as client:
        served = client.post("/landmarks", files={"image": ("a.jpg", ASTRONAUT.read_bytes())}).json()
    assert len(result.faces) == len(served["faces"]) == 1
    ours, theirs = result.faces[0], served["faces"][0]
    np.testing.assert_allclose(ours.landmarks.points, theirs["landmarks"], atol=1e-3)
    np.testing.assert_allclose(ours.landmarks.confidence, theirs["confidence"], atol=1e-4)
    assert ours.pose is not None
    assert ours.pose.pose is not None
    assert ours.pose.pose.yaw == pytest.approx(theirs["pose"]["yaw"], abs=0.01)
    boxed = landmarker(ASTRONAUT, boxes=[(150, 60, 330, 280)])
    assert boxed.faces[0].source == "caller"


@needs_checkpoint
def test_a_requests_passes_give_the_landmarker_with_those_passes():
    engine = EngineOptions(device="cpu", precision="fp32")
    with open_client(SHIPPED_CHECKPOINT, precision="fp32") as client:
        answers = {
            p: client.post("/landmarks", files={"image": ("a.jpg", ASTRONAUT.read_bytes())}, data={"passes": str(p)})
            for p in (1, 3)
        }
    for p, answer in answers.items():
        assert answer.status_code == 200, answer.text
        result = model.Landmarker.load(options=PipelineOptions(passes=p), engine=engine)(ASTRONAUT)
        served = answer.json()["faces"][0]
        np.testing.assert_allclose(result.faces[0].landmarks.points, served["landmarks"], atol=1e-3)
        np.testing.assert_allclose(result.faces[0].landmarks.confidence, served["confidence"], atol=1e-4)
    one, three = (np.array(answers[p].json()["faces"][0]["landmarks"]) for p in (1, 3))
    assert 0 < np.abs(one - three).max() < 10  # the passes moved the points, by pixels, not by a face


@needs_checkpoint
def test_caller_boxes_are_re_framed_when_they_do_not_fit_the_landmarks_or_when_asked():
    """A tight landmark box keeps one pass; a rough box (another detector's framing) gets a second by default;
    a request's ``passes`` decides either way. Served answers equal the library's."""
    landmarker = model.Landmarker.load(engine=EngineOptions(device="cpu", precision="fp32"))
    rough = (150.0, 60.0, 330.0, 280.0)  # roughly the face: forehead in, jaw cut
    tight = tuple(
        float(v) for v in box_from_points(landmarker(ASTRONAUT, boxes=[rough], passes=2).faces[0].landmarks.points)
    )
    cases = [(tight, None, tight), (rough, None, None), (rough, 1, rough), (tight, 2, None)]  # None: re-framed
    with open_client(SHIPPED_CHECKPOINT, precision="fp32") as client:
        for box, passes, kept in cases:
            form = {"boxes": json.dumps([box])} | ({"passes": str(passes)} if passes else {})
            answer = client.post("/landmarks", files={"image": ("a.jpg", ASTRONAUT.read_bytes())}, data=form)
            assert answer.status_code == 200, answer.text
            served = answer.json()["faces"][0]
            result = landmarker(ASTRONAUT, boxes=[box], passes=passes).faces[0]
            np.testing.assert_allclose(result.landmarks.points, served["landmarks"], atol=1e-3)
            assert result.source == "caller"
            if kept is not None:
                assert served["box"] == pytest.approx(kept, abs=1e-3)  # one pass: the box as given
            else:
                assert served["box"] != pytest.approx(box)  # re-framed from the first pass's landmarks


@needs_checkpoint
def test_the_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import model\n.*?)```", text, re.S)
    assert block is not None, "README has no `import model` example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert len(namespace["result"].faces) == 1


def test_every_image_form_reads_to_the_same_pixels(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :, 0] = 200  # red
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes(rgb))
    for form in (path, str(path), path.read_bytes(), Image.fromarray(rgb), rgb):
        np.testing.assert_array_equal(read_image(form), rgb)
    np.testing.assert_array_equal(read_image(rgb[:, :, ::-1], channels="bgr"), rgb)
    assert read_image(rgb[:, :, 0]).shape == (20, 30, 3)  # grey
    with pytest.raises(ValueError, match="uint8"):
        read_image(rgb.astype(np.float32))
    with pytest.raises(ImageError, match="not a JPEG, PNG, WebP or BMP") as refused:  # a ValueError
        read_image(b"not an image")
    assert refused.value.code == "unsupported_media_type"  # the code the service answers 415 with
    with pytest.raises(ValueError, match="cannot read"):
        read_image(tmp_path / "missing.png")


def test_many_batches_photos_and_checks_its_boxes(tiny_checkpoint):
    landmarker = model.Landmarker.load(tiny_checkpoint, engine=EngineOptions(device="cpu", precision="fp32"))
    image = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    box = [(150.0, 60.0, 330.0, 280.0)]
    results = landmarker.many([image, image], boxes=[box, box])
    np.testing.assert_allclose(results[0].faces[0].landmarks.points, results[1].faces[0].landmarks.points)
    with pytest.raises(ValueError, match="box lists"):
        landmarker.many([image], boxes=[box, box])

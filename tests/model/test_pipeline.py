import asyncio
import math

import numpy as np
import pytest

from model.detector import Detection
from model.engine import EngineOptions
from model.geometry import box_from_points, transform_points
from model.inference import load_for_inference
from model.landmarks import LEFT_EYE, RIGHT_EYE
from model.pipeline import (
    Crop,
    Framing,
    Landmarks,
    Pipeline,
    PipelineOptions,
    caller_faces,
    drive,
    drive_async,
    eye_roll,
    face_crop,
    refine,
    upright_box,
)
from tests.conftest import draw_face, mean_face


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
    crop = face_crop(image, framing, 128)
    assert crop.image.shape == (128, 128, 3)
    forward = np.linalg.inv(np.vstack([crop.inverse, [0, 0, 1]]))[:2]
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


# --- the Pipeline on the tiny test model -----------------------------------------------------------------------


class FakeDetector:
    """Two faces with eye lines; the pipeline must take them largest first as given and keep their provenance."""

    def __init__(self, faces: list[Detection]) -> None:
        self.faces = faces
        self.calls = 0

    def __call__(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        return list(self.faces)


def tilted(box: tuple[float, float, float, float], roll: float, score: float = 0.9) -> Detection:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    a = math.radians(roll)
    eyes = ((cx - 20 * math.cos(a), cy - 20 * math.sin(a)), (cx + 20 * math.cos(a), cy + 20 * math.sin(a)))
    return Detection(box, score, eyes)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return load_for_inference(tiny_checkpoint, EngineOptions(device="cpu", precision="fp32"))


@pytest.fixture(scope="module")
def photo():
    image, _ = draw_face(256, seed=5)
    return image


def recording(engine):
    calls: list[list[Crop]] = []

    def infer(crops: list[Crop]) -> list[Landmarks]:
        calls.append(crops)
        return engine.infer(crops)

    return infer, calls


def test_detected_faces_get_the_second_pass_framed_from_their_first_landmarks(engine, photo):
    detector = FakeDetector([tilted((40.0, 50.0, 200.0, 210.0), 0.0), tilted((10.0, 10.0, 60.0, 60.0), 0.0, 0.7)])
    pipeline = Pipeline(PipelineOptions(), engine.config.input_size, detector)
    infer, calls = recording(engine)
    result = pipeline.run(photo, infer, max_faces=10)
    assert [len(c) for c in calls] == [2, 2]  # first pass, then the second pass of both detected faces
    first = engine.infer(pipeline.crops(photo, [Framing(d.box) for d in detector.faces]))
    second = engine.infer(pipeline.crops(photo, [Framing(f.box) for f in result.faces]))
    for face, before, after in zip(result.faces, first, second, strict=True):
        assert face.source == "detector"
        assert face.box == pytest.approx(refine(before.points, aligned=False).box)  # re-framed from pass one
        np.testing.assert_allclose(face.landmarks.points, after.points, atol=1e-5)  # and run on that framing
    assert [f.detection_score for f in result.faces] == [0.9, 0.7]
    assert set(result.timings_ms) == {"detect", "crop"}


def test_a_third_pass_is_framed_from_the_second_and_the_points_are_the_mean_of_all(engine, photo):
    detector = FakeDetector([tilted((40.0, 50.0, 200.0, 210.0), 0.0)])
    pipeline = Pipeline(PipelineOptions(passes=3), engine.config.input_size, detector)
    infer, calls = recording(engine)
    face = pipeline.run(photo, infer).faces[0]
    assert [len(c) for c in calls] == [1, 1, 1]
    first, second, third = (engine.infer(c)[0] for c in calls)
    assert face.box == pytest.approx(refine(second.points, aligned=False).box)  # the third framed from the second
    assert refine(second.points, aligned=False).box != pytest.approx(refine(first.points, aligned=False).box)
    np.testing.assert_allclose(face.landmarks.points, (first.points + second.points + third.points) / 3, atol=1e-5)
    mean_confidence = (first.confidence + second.confidence + third.confidence) / 3
    np.testing.assert_allclose(face.landmarks.confidence, mean_confidence, atol=1e-6)
    infer, calls = recording(engine)
    never = Pipeline(PipelineOptions(passes=3, caller_reframe_iou=0.0), engine.config.input_size, detector)
    never.run(photo, infer, caller_faces([(40.0, 50.0, 200.0, 210.0)]))
    assert [len(c) for c in calls] == [1]  # a caller's box: the detected faces' pass count does not apply


def test_a_caller_box_unlike_its_landmarks_box_gets_a_second_pass(engine, photo):
    """Without a call's count, a caller's box gets a second pass only when the tight box of its first pass's
    landmarks overlaps it less than ``caller_reframe_iou`` (another detector's framing)."""
    given = caller_faces([(40.0, 50.0, 200.0, 210.0)])
    counts = {}
    for threshold in (0.0, 1.0):  # never; always (no landmark box equals the given one exactly)
        pipeline = Pipeline(PipelineOptions(caller_reframe_iou=threshold), engine.config.input_size)
        infer, calls = recording(engine)
        face = pipeline.run(photo, infer, given).faces[0]
        counts[threshold] = [len(c) for c in calls]
        first = engine.infer(calls[0])[0]
        assert face.box == pytest.approx(given[0].box if threshold == 0 else refine(first.points, False).box)
    assert counts == {0.0: [1], 1.0: [1, 1]}
    pipeline = Pipeline(PipelineOptions(), engine.config.input_size)
    points = np.array([[50.0 + 140 * (k % 9) / 8, 60.0 + 140 * (k // 9) / 7] for k in range(68)])
    assert not pipeline.framed_unlike_landmarks((50.0, 60.0, 190.0, 200.0), points)  # its own tight box
    assert not pipeline.framed_unlike_landmarks((48.0, 58.0, 192.0, 203.0), points)  # a few pixels off
    assert pipeline.framed_unlike_landmarks((70.0, 40.0, 190.0, 180.0), points)  # a detector's: no jaw, forehead
    assert not pipeline.framed_unlike_landmarks((0.0, 0.0, 1.0, 1.0), np.full((68, 2), np.nan))
    with pytest.raises(ValueError, match="caller_reframe_iou"):
        PipelineOptions(caller_reframe_iou=1.5)


def test_a_calls_pass_count_holds_for_caller_boxes_too(engine, photo):
    """A call's ``passes`` applies to caller boxes as to detected faces; caller boxes are never rotated."""
    options = PipelineOptions(passes=3, align=True)
    detector = FakeDetector([tilted((10.0, 10.0, 60.0, 60.0), 0.0)])
    pipeline = Pipeline(options, engine.config.input_size, detector)
    given = caller_faces([(40.0, 50.0, 200.0, 210.0)])
    infer, calls = recording(engine)
    face = drive(pipeline.steps(photo, given, passes=2), infer).faces[0]
    assert [len(c) for c in calls] == [1, 1]
    first, second = (engine.infer(c)[0] for c in calls)
    assert face.source == "caller"
    assert face.box == pytest.approx(refine(first.points, aligned=False).box)  # never rotated, even with align
    np.testing.assert_allclose(face.landmarks.points, second.points, atol=1e-5)
    infer, calls = recording(engine)
    drive(pipeline.steps(photo, passes=1), infer)  # a call's count holds for detected faces too
    assert [len(c) for c in calls] == [1]
    with pytest.raises(ValueError, match="passes must be 1 to 3"):
        drive(pipeline.steps(photo, given, passes=4), infer)


@pytest.mark.parametrize("passes", [0, -1, 4])
def test_passes_out_of_range_are_refused(passes):
    with pytest.raises(ValueError, match="passes must be 1 to 3"):
        PipelineOptions(passes=passes)


def test_caller_boxes_skip_detection_and_keep_their_box(engine, photo):
    # the tiny model's landmarks fit no box: with re-framing off, the box is kept as given
    pipeline = Pipeline(PipelineOptions(caller_reframe_iou=0.0), engine.config.input_size, FakeDetector([]))
    infer, calls = recording(engine)
    boxes = [(40.0, 50.0, 200.0, 210.0)]
    result = pipeline.run(photo, infer, caller_faces(boxes))
    assert [len(c) for c in calls] == [1]
    assert result.faces[0].source == "caller"
    assert result.faces[0].detection_score is None
    assert result.faces[0].box == boxes[0]
    assert "detect" not in result.timings_ms


def test_one_pass_and_max_faces(engine, photo):
    faces = [tilted((40.0, 50.0, 200.0, 210.0), 0.0), tilted((10.0, 10.0, 60.0, 60.0), 0.0)]
    pipeline = Pipeline(PipelineOptions(passes=1), engine.config.input_size, FakeDetector(faces))
    infer, calls = recording(engine)
    result = pipeline.run(photo, infer, max_faces=1)
    assert [len(c) for c in calls] == [1]
    assert len(result.faces) == 1
    assert result.faces[0].box == faces[0].box


def test_aligned_detected_faces_are_cropped_on_the_detectors_eye_line(engine, photo):
    face = tilted((40.0, 50.0, 200.0, 210.0), 20.0)
    aligned = Pipeline(PipelineOptions(align=True, passes=1), engine.config.input_size, FakeDetector([face]))
    infer, calls = recording(engine)
    aligned.run(photo, infer)
    assert face.roll == pytest.approx(20.0)
    size = engine.config.input_size
    np.testing.assert_array_equal(calls[0][0].image, face_crop(photo, Framing(face.box, face.roll), size).image)
    infer, calls = recording(engine)
    aligned.run(photo, infer, caller_faces([face.box]))  # a caller's box is never rotated
    np.testing.assert_array_equal(calls[0][0].image, face_crop(photo, Framing(face.box), size).image)


def test_run_many_and_drive_async_give_what_run_gives(engine, photo):
    faces = [tilted((40.0, 50.0, 200.0, 210.0), 0.0), tilted((60.0, 60.0, 180.0, 190.0), 0.0)]
    pipeline = Pipeline(PipelineOptions(), engine.config.input_size, FakeDetector(faces))
    alone = [pipeline.run(photo, engine.infer), pipeline.run(photo[:, ::-1].copy(), engine.infer)]
    infer, calls = recording(engine)
    together = pipeline.run_many([(photo, None), (photo[:, ::-1].copy(), None)], infer, batch_size=3)
    assert [len(c) for c in calls] == [3, 1, 3, 1]  # 4 first-pass crops in batches of 3, then 4 second-pass
    for a, b in zip(alone, together, strict=True):
        for fa, fb in zip(a.faces, b.faces, strict=True):
            np.testing.assert_allclose(fa.landmarks.points, fb.landmarks.points, atol=1e-3)

    async def infer_async(crops: list[Crop]) -> list[Landmarks]:
        return engine.infer(crops)

    async def offload(fn):  # noqa: ANN001, ANN202
        return fn()

    result = asyncio.run(drive_async(pipeline.steps(photo), infer_async, offload))
    for fa, fb in zip(alone[0].faces, result.faces, strict=True):
        np.testing.assert_allclose(fa.landmarks.points, fb.landmarks.points, atol=1e-3)


def test_a_wrong_number_of_results_is_an_error_not_a_misassignment(engine, photo):
    pipeline = Pipeline(PipelineOptions(), engine.config.input_size)
    with pytest.raises(RuntimeError, match="1 results for 2 crops"):
        pipeline.run(photo, lambda crops: engine.infer(crops[:1]), caller_faces([(0, 0, 50, 50), (60, 60, 120, 120)]))
    with pytest.raises(ValueError, match="no face detector"):
        pipeline.run(photo, engine.infer)

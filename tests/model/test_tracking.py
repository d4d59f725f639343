"""Video tracking (model.tracking) against a simulated world: faces at known places, a network that finds the face
its crop holds, a detector that counts its calls."""

from __future__ import annotations

import numpy as np
import pytest

from model.detector import Detection, iou
from model.engine import Crop, Landmarks
from model.geometry import box_from_points
from model.pipeline import Pipeline, PipelineOptions, drive
from model.tracking import OneEuroFilter, Tracker, TrackOptions, inside_fraction
from tests.conftest import mean_face

SIZE = 64  # the fake network's crop side
FRAME = np.zeros((480, 640, 3), np.uint8)


class World:
    """Faces (68 points each) that the detector and the network see; a face whose crop does not hold it comes
    back with low confidence, as a real network's would."""

    def __init__(self, faces: list[np.ndarray], noise: float = 0.0, seed: int = 0) -> None:
        self.faces = faces
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.detections = 0

    def detect(self, image: np.ndarray) -> list[Detection]:
        self.detections += 1
        h, w = image.shape[:2]
        boxes = [box_from_points(f) for f in self.faces]
        return [Detection(tuple(map(float, b)), 0.9) for b in boxes if inside_fraction(tuple(b), w, h) == 1.0]

    def infer(self, crops: list[Crop]) -> list[Landmarks]:
        out = []
        for crop in crops:
            centre = crop.inverse @ np.array([SIZE / 2, SIZE / 2, 1.0])
            near = min(self.faces, key=lambda f: float(np.linalg.norm(f.mean(0) - centre)), default=None)
            if near is not None and np.linalg.norm(near.mean(0) - centre) < 30:
                pts = near + self.rng.normal(0, self.noise, near.shape)
                out.append(Landmarks(pts, np.full(68, 0.9)))
            else:
                out.append(Landmarks(np.tile(centre, (68, 1)) + self.rng.normal(0, 5, (68, 2)), np.full(68, 0.05)))
        return out


def tracker(world: World, **options: object) -> Tracker:
    pipeline = Pipeline(PipelineOptions(), SIZE, world.detect)
    return Tracker(pipeline, TrackOptions(**options), max_faces=4)  # type: ignore[arg-type]


def step(t: Tracker, world: World):
    return drive(t.steps(FRAME), world.infer)


def test_a_tracked_face_keeps_its_id_and_the_detector_runs_every_n_frames():
    world = World([mean_face(100, (200, 200))])
    t = tracker(world, detect_every=5, smoothing=False)
    ids, detected = [], []
    for i in range(12):
        world.faces = [mean_face(100, (200 + 3 * i, 200))]
        before = world.detections
        result = step(t, world)
        ids.append([f.track_id for f in result.faces])
        detected.append(world.detections > before)
        np.testing.assert_allclose(result.faces[0].landmarks.points, world.faces[0])
    assert ids == [[1]] * 12
    assert detected == [i % 5 == 0 for i in range(12)]
    assert result.faces[0].source == "tracker"


def test_a_new_face_gets_a_new_id_and_a_face_that_leaves_is_dropped():
    world = World([mean_face(100, (200, 200))])
    t = tracker(world, detect_every=3, smoothing=False)
    assert [f.track_id for f in step(t, world).faces] == [1]
    world.faces.append(mean_face(100, (450, 220)))
    seen = [[f.track_id for f in step(t, world).faces] for _ in range(4)]
    assert seen[-1] == [1, 2]  # found at the next detector run, with a new id
    world.faces = [world.faces[0], mean_face(100, (700, 220))]  # the second face walks out of the frame
    assert [f.track_id for f in step(t, world).faces] == [1]
    world.faces = [world.faces[0]]
    for _ in range(4):
        assert [f.track_id for f in step(t, world).faces] == [1]
    world.faces.append(mean_face(100, (450, 220)))  # and comes back: a new id, the old one is not reused
    for _ in range(4):
        result = step(t, world)
    assert [f.track_id for f in result.faces] == [1, 3]


def test_a_lost_track_is_dropped_and_the_next_frame_runs_the_detector():
    world = World([mean_face(100, (200, 200))])
    t = tracker(world, detect_every=100, smoothing=False)
    step(t, world)
    world.faces = [mean_face(100, (400, 300))]  # jumps beyond the crop: the network's confidence collapses
    assert step(t, world).faces == []
    before = world.detections
    result = step(t, world)
    assert world.detections == before + 1
    assert [f.track_id for f in result.faces] == [2]


def test_two_tracks_on_one_face_keep_the_older_id():
    world = World([mean_face(100, (200, 200))])
    t = tracker(world, detect_every=1, smoothing=False, match_iou=0.99)  # every detection looks new
    step(t, world)
    world.faces = [mean_face(100, (202, 200))]
    assert [f.track_id for f in step(t, world).faces] == [1]


def test_the_filter_damps_a_still_face_and_follows_a_moving_one():
    rng = np.random.default_rng(0)
    truth = mean_face(100, (300, 240))
    f = OneEuroFilter(1.0, 10.0, 1.0)
    still = [f(truth + rng.normal(0, 1.0, truth.shape), i / 30, 100.0) for i in range(90)]
    raw_rms = 1.0 * np.sqrt(2)
    rms = float(np.sqrt(((np.stack(still[30:]) - truth) ** 2).sum(-1).mean()))
    assert rms < 0.5 * raw_rms
    f = OneEuroFilter(1.0, 10.0, 1.0)
    moving = [f(truth + np.array([4.0 * i, 0.0]), i / 30, 100.0) for i in range(60)]
    trail = (truth[:, 0] + 4.0 * 59) - moving[-1][:, 0]
    assert float(trail.mean()) / 4.0 < 1.0  # under a frame behind at 4 px/frame
    assert OneEuroFilter(1.0, 0.0, 1.0)(truth, 0.0, 100.0) == pytest.approx(truth)


def test_smoothing_reduces_jitter_through_the_tracker():
    def jitter(smoothing: bool) -> float:
        world = World([mean_face(100, (300, 240))], noise=1.0, seed=1)
        t = tracker(world, smoothing=smoothing)
        points = [step(t, world).faces[0].landmarks.points for _ in range(60)]
        return float(np.sqrt(((np.stack(points[20:]) - world.faces[0]) ** 2).sum(-1).mean()))

    assert jitter(True) < 0.6 * jitter(False)


def test_options_are_checked_and_helpers_measure_boxes():
    assert TrackOptions().problem() is None
    assert "detect_every" in (TrackOptions(detect_every=0).problem() or "")
    assert "min_cutoff" in (TrackOptions(min_cutoff=float("nan")).problem() or "")
    assert "beta" in (TrackOptions(beta=-1).problem() or "")
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert inside_fraction((-10, 0, 10, 10), 640, 480) == pytest.approx(0.5)

"""Video: faces tracked across frames, their points smoothed over time.

A :class:`Tracker` holds one stream's faces. Each frame runs :meth:`Tracker.steps`, the same yield-crops /
receive-landmarks protocol as :meth:`model.pipeline.Pipeline.steps` (so the service drives it with its batcher and
:class:`model.Landmarker` with a plain call):

1. **framing from the last frame** — a tracked face is cropped from its previous points (the framing of the
   pipeline's second pass, :func:`model.pipeline.refine`), so it needs no detector and one network pass instead of
   a detection and two. (Moving the crop by the face's last displacement was measured and left out: on the
   benchmark's clips it added jitter and took no lag away, ``benchmarks/results/stream.md``);
2. **the detector** runs on the first frame, every ``detect_every`` frames, while nothing is tracked, and on the frame
   after a track is lost. A detection that overlaps a track (IoU >= ``match_iou``) is that track; one that does not
   is a new face (a new ``track_id``, the photo path, with its passes). A track the detector misses
   twice in a row is dropped;
3. **losing a face** — a track whose mean point confidence falls under ``min_confidence``, or whose box is less than
   half inside the frame, is dropped (and the next frame runs the detector); of two tracks on one face, the
   younger goes;
4. **the filter** — each track's points go through a :class:`OneEuroFilter` (Casiez et al., CHI 2012): a low-pass
   whose cut-off opens with the face's speed, so a still face is damped and a moving one followed. Speed is
   measured in face sizes per second, so the same settings hold for a face of any size in the frame.

Framing always uses the raw points (no lag enters the crops); the answer carries the filtered ones, and the pose
is fitted to them. This module holds no threads and needs no torch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from model.detector import iou
from model.engine import Image, Landmarks
from model.geometry import Box, as_box, box_from_points
from model.pipeline import Face, FaceBox, PhotoResult, Pipeline, Steps, refine


@dataclass(frozen=True)
class TrackOptions:
    """How a stream is tracked and smoothed (the defaults are the service's and the CLI's)."""

    detect_every: int = 10  # frames between detector runs while faces are tracked (1: detect on every frame)
    smoothing: bool = True  # the One Euro filter on the points
    min_cutoff: float = 1.0  # Hz: the filter's cut-off on a still face (lower: steadier, slower to follow)
    beta: float = 10.0  # how fast the cut-off opens with speed, Hz per (face size / s)
    d_cutoff: float = 1.0  # Hz: the cut-off of the speed estimate
    fps: float = 30.0  # frame rate assumed when frames come without time stamps
    min_confidence: float = 0.25  # mean point confidence under which a track is lost
    match_iou: float = 0.3  # a detection with at least this IoU with a track is that track

    def problem(self) -> str | None:
        """What is out of range, in one line, or ``None``."""
        if self.detect_every < 1:
            return "detect_every must be at least 1"
        for name in ("min_cutoff", "d_cutoff", "fps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                return f"{name} must be a positive number"
        if not (math.isfinite(self.beta) and self.beta >= 0):
            return "beta must be a number >= 0"
        if not 0 <= self.min_confidence < 1:
            return "min_confidence must be in [0, 1)"
        if not 0 < self.match_iou <= 1:
            return "match_iou must be in (0, 1]"
        return None


def _alpha(cutoff: NDArray[np.float64] | float, dt: float) -> NDArray[np.float64]:
    tau = 1.0 / (2 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """The One Euro filter over an array of points ``(N, 2)``: each point's cut-off is
    ``min_cutoff + beta * speed``, its speed (low-passed at ``d_cutoff``) in ``scale`` units per second."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x: NDArray[np.float64] | None = None
        self._dx: NDArray[np.float64] | None = None
        self._t = 0.0

    def __call__(self, points: NDArray[np.floating], t: float, scale: float) -> NDArray[np.float64]:
        x: NDArray[np.float64] = np.asarray(points, dtype=np.float64)
        if self._x is None or self._dx is None or t <= self._t:
            if self._x is None or self._dx is None:
                self._dx = np.zeros_like(x)
            self._x, self._t = x.copy(), t
            return x.copy()
        dt = t - self._t
        a_d = _alpha(self.d_cutoff, dt)
        self._dx = a_d * (x - self._x) / dt + (1 - a_d) * self._dx
        speed = np.linalg.norm(self._dx, axis=-1, keepdims=True) / max(scale, 1e-6)
        a = _alpha(self.min_cutoff + self.beta * speed, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


def box_of(points: NDArray[np.floating]) -> Box:
    return as_box(box_from_points(np.asarray(points)))


def inside_fraction(box: Box, width: int, height: int) -> float:
    """How much of ``box`` lies inside a ``width`` x ``height`` frame (0-1)."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area <= 0:
        return 0.0
    w = min(box[2], width - 1) - max(box[0], 0)
    h = min(box[3], height - 1) - max(box[1], 0)
    return max(0.0, w) * max(0.0, h) / area


@dataclass
class Track:
    """One face followed across frames: its id, last raw points and its filter."""

    track_id: int
    points: NDArray[np.float64]
    filter: OneEuroFilter
    misses: int = 0  # detector runs in a row that did not find it

    @property
    def box(self) -> Box:
        return box_of(self.points)

    def face_box(self, align: bool) -> FaceBox:
        """Where to crop it in the next frame: framed from its last points as the second pass frames a face
        (upright in its own frame with ``align``)."""
        framing = refine(self.points, align)
        return FaceBox(framing.box, "tracker", None, framing.roll)


@dataclass
class Tracker:
    """One stream's tracks (module docstring). Feed every frame, in order, through :meth:`steps`."""

    pipeline: Pipeline
    options: TrackOptions = TrackOptions()
    max_faces: int | None = None  # default: the pipeline's options
    tracks: list[Track] = field(default_factory=list)
    frame: int = 0  # frames seen
    next_id: int = 1
    _last_detect: int = -(10**9)
    _detect_next: bool = True

    @property
    def limit(self) -> int:
        return self.max_faces or self.pipeline.options.max_faces

    def detect_due(self) -> bool:
        return self._detect_next or not self.tracks or self.frame - self._last_detect >= self.options.detect_every

    def _match(self, found: Sequence[FaceBox]) -> list[FaceBox]:
        """Mark which tracks the detector found again and return the detections that are new faces."""
        new: list[FaceBox] = []
        taken: set[int] = set()
        for det in found:
            scores = [(iou(det.box, t.box), i) for i, t in enumerate(self.tracks) if i not in taken]
            best = max(scores, default=(0.0, -1))
            if best[0] >= self.options.match_iou:
                taken.add(best[1])
            else:
                new.append(det)
        for i, track in enumerate(self.tracks):
            track.misses = 0 if i in taken else track.misses + 1
        self.tracks = [t for t in self.tracks if t.misses < 2]
        return new[: max(0, self.limit - len(self.tracks))]

    def steps(self, image: Image, t: float | None = None) -> Steps:
        """One frame (at ``t`` seconds; default ``frame / fps``): yields crops, receives their landmarks, returns
        the frame's faces, each with its ``track_id`` (and filtered points with smoothing on)."""
        height, width = image.shape[:2]
        now = self.frame / self.options.fps if t is None else t
        timings: dict[str, float] = {}
        new: list[FaceBox] = []
        if self.detect_due():
            t0 = time.perf_counter()
            new = self._match(self.pipeline.detect(image, self.limit))
            timings["detect"] = 1000 * (time.perf_counter() - t0)
            self._last_detect = self.frame
            self._detect_next = False
        align = self.pipeline.options.align
        owners: list[Track | None] = [*self.tracks, *([None] * len(new))]
        smoothing = self.options.smoothing  # then the pose is fitted once, to the smoothed points (_smoothed)
        result = yield from self.pipeline.steps(
            image, [t.face_box(align) for t in self.tracks] + new, pose=not smoothing
        )
        faces: list[Face] = []
        kept: list[Track] = []
        for face, owner in zip(result.faces, owners, strict=True):
            points = face.landmarks.points
            lost = (
                not np.isfinite(points).all()
                or float(np.mean(face.landmarks.confidence)) < self.options.min_confidence
                or inside_fraction(box_of(points), width, height) < 0.5
            )
            if lost:
                self._detect_next = True
                continue
            if owner is None:
                o = self.options
                owner = Track(self.next_id, points, OneEuroFilter(o.min_cutoff, o.beta, o.d_cutoff))
                self.next_id += 1
            else:
                owner.points = points
            kept.append(owner)
            faces.append(self._smoothed(face, owner, now))
        self.tracks, faces = self._deduplicate(kept, faces)
        self.frame += 1
        return PhotoResult(faces, {**result.timings_ms, **timings})

    def _smoothed(self, face: Face, track: Track, now: float) -> Face:
        if not self.options.smoothing:
            return replace(face, track_id=track.track_id)
        box = box_of(track.points)
        scale = max(box[2] - box[0], box[3] - box[1])
        points = track.filter(track.points, now, scale)
        landmarks = Landmarks(points, face.landmarks.confidence, face.landmarks.coarse_points)
        return replace(face, landmarks=landmarks, pose=self.pipeline.pose(landmarks), track_id=track.track_id)

    @staticmethod
    def _deduplicate(tracks: list[Track], faces: list[Face]) -> tuple[list[Track], list[Face]]:
        """Two tracks that landed on one face (IoU > 0.5): the older id stays."""
        keep = [
            i for i, t in enumerate(tracks)
            if not any(u.track_id < t.track_id and iou(t.box, u.box) > 0.5 for u in tracks)
        ]  # fmt: skip
        return [tracks[i] for i in keep], [faces[i] for i in keep]

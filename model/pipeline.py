"""The request path, photo -> landmarks, in one place: every caller (the service, the CLI, ``training.evaluate``,
training's validation and the benchmarks) runs a :class:`Pipeline`, so what is evaluated is what is served.

Stages, in order, each in one function here:

1. **faces** — where each face is: the detector's (:meth:`Pipeline.detect`, YuNet, largest first) or the caller's
   boxes (:func:`caller_faces`). A :class:`FaceBox` says which (``source``): provenance is data, never guessed.
2. **framing** — how to crop it: its landmark-convention ``box`` and in-plane ``roll`` (:class:`Framing`); with
   ``align`` the detector's eye line gives the roll.
3. **crop** — :func:`face_crop`: the ``S x S`` network input and its crop -> image affine (:class:`Crop`).
4. **network** — an ``infer`` callable, ``list[Crop] -> list[Landmarks]`` in image pixels. The service passes its
   batcher; everything else passes :meth:`model.inference.InferenceModel.infer` (or the ONNX Runtime engine).
5. **more passes** — :func:`refine` re-frames each face from the previous pass's landmarks (the tight box,
   upright in the face's own frame with ``align``) and the face runs again, ``PipelineOptions.passes`` passes in
   all for a detected face (default 2: the second pass; 1: none; 3: one more). A caller's box gets one, and a
   second when it frames the face unlike its landmarks' tight box (another detector's box), unless the call says
   how many (:meth:`Pipeline.passes_for`).
   Two passes serve the second pass's points; three serve the mean of all three (:func:`mean_landmarks`): each
   saw the face in a different crop, and that mean was the best use of three passes on val, where averaging two
   passes gained nothing beyond noise (``benchmarks/results/passes.md``).
6. **pose** — with a :class:`model.pose.HeadModel`, each face's yaw, pitch and roll from its final points
   (:func:`model.pose.estimate_pose`), or no pose with the reason.

:meth:`Pipeline.steps` is that sequence as a generator that yields the crops it needs run and receives their
landmarks, so the same code drives a plain call (:meth:`Pipeline.run`, :func:`drive`), an async batcher
(:func:`drive_async`) and faces of many photos batched together (:meth:`Pipeline.run_many`). This module
holds no threads and needs no torch.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from model.detector import Detection, DetectorOptions, iou
from model.engine import Crop, Image, Landmarks
from model.geometry import Box, as_box, box_from_points, crop_matrix, invert, line_roll, warp
from model.landmarks import LEFT_EYE, RIGHT_EYE
from model.pose import HeadModel, PoseFit, PoseOptions, estimate_pose

MAX_PASSES = 3  # network passes per detected face at most (the counts benchmarks.passes measured)
Source = Literal["caller", "detector", "tracker"]  # tracker: framed from the last video frame (model.tracking)


@dataclass(frozen=True)
class PipelineOptions:
    """Everything that decides how a photo becomes faces and crops, built once (from the service's Settings or a
    command line) and passed by name. How the network runs (device, precision, batch size, flip test) is the
    engine's: :class:`model.engine.EngineOptions`."""

    passes: int = 2  # network passes for a detected face: 1 on the detector's box, each more re-framed from the last
    # (3: the points are the mean of the three)
    align: bool = False  # rotate crops upright (detector: YuNet's eye line; later passes: the 68 points' eyes)
    detector: DetectorOptions = DetectorOptions()
    pose: PoseOptions = PoseOptions()  # how head pose is fitted (with a head model) and when it is refused
    max_faces: int = 10  # the detector's faces kept per photo, largest first (a call may ask for fewer)
    # A caller's box (a call without ``passes``) whose IoU with the tight box of its first pass's landmarks is under
    # this gets a second pass: it frames the face unlike the landmark box the network was trained on, as another
    # face detector's box does. Chosen on val (``benchmarks/results/caller_boxes.md``); 0: never.
    caller_reframe_iou: float = 0.85

    def __post_init__(self) -> None:
        check_passes(self.passes)
        if not 0.0 <= self.caller_reframe_iou <= 1.0:
            raise ValueError(f"caller_reframe_iou must be from 0 to 1, not {self.caller_reframe_iou}")


@dataclass(frozen=True)
class FaceBox:
    """A face to find landmarks for: its landmark-convention ``box``, where it came from, the detector's score
    (``None`` for a caller's box) and the roll of the detector's eye line in degrees (0 without one)."""

    box: Box
    source: Source
    detection_score: float | None = None
    roll: float = 0.0


@dataclass(frozen=True)
class Framing:
    """Where to crop one face: its landmark-convention ``box`` and in-plane ``roll`` in degrees (0: axis-aligned)."""

    box: Box
    roll: float = 0.0


@dataclass(frozen=True)
class Face:
    """A finished face: the box its final crop was made from, where the face came from, and its landmarks."""

    box: Box
    source: Source
    detection_score: float | None
    landmarks: Landmarks
    pose: PoseFit | None = None  # None: the pipeline has no head model
    track_id: int | None = None  # video (model.tracking): the same while the face is tracked; None for photos


@dataclass
class PhotoResult:
    """Every face of one photo (in the order found or given) and the pipeline's own timings in ms."""

    faces: list[Face]
    timings_ms: dict[str, float] = field(default_factory=dict)


Infer = Callable[[list[Crop]], list[Landmarks]]
AsyncInfer = Callable[[list[Crop]], Awaitable[list[Landmarks]]]
Steps = Generator[list[Crop], list[Landmarks], PhotoResult]


Detector = Callable[[Image], list[Detection]]


MAX_BOX_FACTOR = 4  # a face box may overhang the photo (a tight close-up), not dwarf it


def box_problem(boxes: Sequence[Box], width: int, height: int) -> str | None:
    """What is wrong with a caller's boxes for a ``width`` x ``height`` photo (not finite, degenerate, outside the
    photo, or far larger than it), or ``None``: the service answers 400 with it, the CLI skips the photo."""
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            return f"box {i} has a non-finite coordinate"
        if x2 - x1 < 1 or y2 - y1 < 1:
            return f"box {i} must have x2 > x1 and y2 > y1 (at least 1 px)"
        if x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
            return f"box {i} lies outside the {width}x{height} image"
        if max(x2 - x1, y2 - y1) > MAX_BOX_FACTOR * max(width, height):
            return f"box {i} is more than {MAX_BOX_FACTOR}x the size of the {width}x{height} image"
    return None


MAX_COORDINATE = 1e6  # pixels; farther is no face of any photo under the service's pixel limit


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def boxes_from_json(raw: str) -> list[Box]:
    """Caller boxes from their text form, a JSON array of ``[x1, y1, x2, y2]`` number arrays (the service's
    `boxes` field, the CLI's ``--boxes``). Raises ``ValueError`` with a one-line reason: not JSON (NaN and Infinity
    included), not that shape, or a coordinate beyond ±``MAX_COORDINATE``. Integers parse as floats (no huge-int
    arithmetic); the caller bounds the text's length (nesting depth with it)."""
    try:
        value = json.loads(raw, parse_int=float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"`boxes` is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ValueError(f"`boxes` is not valid JSON: {detail}") from None
    if not isinstance(value, list) or not all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, float) for v in b) for b in value
    ):
        raise ValueError("`boxes` must be a JSON array of [x1, y1, x2, y2] number arrays")
    if not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for b in value for v in b):
        raise ValueError(f"box coordinates must be finite numbers within ±{MAX_COORDINATE:.0f} pixels")
    return [(b[0], b[1], b[2], b[3]) for b in value]


def caller_faces(boxes: Sequence[Box]) -> list[FaceBox]:
    """The caller's boxes, one face each, in order."""
    return [FaceBox((float(b[0]), float(b[1]), float(b[2]), float(b[3])), "caller") for b in boxes]


def face_crop(image: Image, framing: Framing, size: int) -> Crop:
    """The ``size`` x ``size`` network input for one face and its crop -> image affine."""
    # crop_matrix rotates counter-clockwise by its angle; a face whose eye line descends to the right (positive
    # roll in image coordinates, y down) is turned back upright by rotating the image by +roll.
    m = crop_matrix(np.asarray(framing.box, dtype=np.float64), size, rotation_deg=framing.roll)
    return Crop(warp(image, m, size), invert(m))


def eye_roll(points: NDArray[np.floating]) -> float:
    """Roll of a face in degrees from its 68 landmarks: the angle of the line from the right to the left eye."""
    pts = np.asarray(points)
    return line_roll(pts[list(RIGHT_EYE)].mean(axis=0), pts[list(LEFT_EYE)].mean(axis=0))


def upright_box(points: NDArray[np.floating], roll: float) -> Box:
    """Tight box of ``points`` in the frame rotated by ``-roll``, expressed as an image-frame box with the same
    centre and size (what :func:`face_crop` needs: it uses the centre and the longer side)."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise ValueError("no finite landmark to frame a face from")
    a = math.radians(roll)
    c, s = math.cos(a), math.sin(a)
    to_upright = np.array([[c, s], [-s, c]])  # rotates the image frame by -roll
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2
    local = (pts - centre) @ to_upright.T
    lo, hi = local.min(axis=0), local.max(axis=0)
    mid = centre + ((lo + hi) / 2) @ to_upright  # back to the image frame
    half = (hi - lo) / 2
    return (float(mid[0] - half[0]), float(mid[1] - half[1]), float(mid[0] + half[0]), float(mid[1] + half[1]))


def refine(points: NDArray[np.floating], aligned: bool) -> Framing:
    """Framing for the next pass from a pass's landmarks ``(68, 2)``."""
    roll = eye_roll(points) if aligned else 0.0
    return Framing(upright_box(points, roll), roll)


Offload = Callable[[Callable[[], list[Crop] | PhotoResult]], Awaitable[list[Crop] | PhotoResult]]


def check_passes(passes: int) -> int:
    """``passes`` if it is a pass count the pipeline runs (1 to :data:`MAX_PASSES`), else ``ValueError``."""
    if not 1 <= passes <= MAX_PASSES:
        raise ValueError(f"passes must be 1 to {MAX_PASSES}, not {passes}")
    return passes


def mean_landmarks(passes: Sequence[Landmarks]) -> Landmarks:
    """One face's passes combined: the mean of their points, confidences and stage-1 points."""
    if len(passes) == 1:
        return passes[0]
    coarse = [p.coarse_points for p in passes if p.coarse_points is not None]
    return Landmarks(
        np.mean([p.points for p in passes], axis=0),
        np.mean([p.confidence for p in passes], axis=0),
        np.mean(coarse, axis=0) if len(coarse) == len(passes) else None,
    )


def drive(steps: Steps, infer: Infer) -> PhotoResult:
    """Run a photo's (or a video frame's, :mod:`model.tracking`) steps to their result with a plain ``infer``."""
    out = advance(steps, None)
    while not isinstance(out, PhotoResult):
        out = advance(steps, infer(out))
    return out


async def drive_async(steps: Steps, infer: AsyncInfer, offload: Offload) -> PhotoResult:
    """:func:`drive` with an awaitable ``infer``; ``offload`` runs each CPU step off the event loop."""
    out = await offload(lambda: advance(steps, None))
    while not isinstance(out, PhotoResult):
        out = await offload(functools.partial(advance, steps, await infer(out)))
    return out


def advance(steps: Steps, results: list[Landmarks] | None) -> list[Crop] | PhotoResult:
    """Send ``results`` into a running :meth:`Pipeline.steps` (``None`` to start it): the next crops to run, or
    the photo's result when it is done."""
    try:
        return next(steps) if results is None else steps.send(results)
    except StopIteration as done:
        return done.value


class Pipeline:
    """Photo -> faces -> framings -> crops -> ``infer`` -> more passes -> :class:`PhotoResult` (module docstring).

    ``input_size`` is the network's crop side; ``detector`` finds faces when no boxes are given (``None``: the
    caller always gives boxes, e.g. evaluation with ground-truth boxes); ``head`` fits each face's head pose
    (``None``: no pose).
    """

    def __init__(
        self,
        options: PipelineOptions,
        input_size: int,
        detector: Detector | None = None,
        head: HeadModel | None = None,
    ) -> None:
        self.options = options
        self.input_size = input_size
        self.detector = detector
        self.head = head

    def pose(self, landmarks: Landmarks) -> PoseFit | None:
        """The face's head pose from its final points (``None`` without a head model)."""
        if self.head is None:
            return None
        return estimate_pose(landmarks.points, landmarks.confidence, self.head, self.options.pose)

    def detect(self, image: Image, max_faces: int | None = None) -> list[FaceBox]:
        """The detector's faces, largest first, at most ``max_faces`` (default: the options')."""
        if self.detector is None:
            raise ValueError("this pipeline has no face detector: give the faces' boxes")
        found = self.detector(image)[: max_faces or self.options.max_faces]
        return [FaceBox(d.box, "detector", d.score, d.roll) for d in found]

    def framing(self, face: FaceBox) -> Framing:
        """How a face's first crop is framed: its box, and the detector's roll when crops are aligned."""
        return Framing(face.box, face.roll if self.options.align and face.source != "caller" else 0.0)

    def passes_for(self, face: FaceBox, passes: int | None = None) -> int:
        """Network passes for ``face`` as a photo starts: a call's ``passes`` for detected faces and caller boxes
        alike; without one, the options' for a detected face and one for a caller's box, which gets a second
        after its first if :meth:`framed_unlike_landmarks` (the tight box of the 68 points needs none: there a
        second pass only adds noise; another face detector's box does, ``benchmarks/results/caller_boxes.md``).
        A tracked face is framed from the last frame's points already: one."""
        if face.source == "tracker":
            return 1
        if passes is not None:
            return passes
        return self.options.passes if face.source == "detector" else 1

    def framed_unlike_landmarks(self, box: Box, points: NDArray[np.floating]) -> bool:
        """Whether a caller's ``box`` frames its face unlike the tight box of the face's landmarks ``(68, 2)``
        (IoU under ``caller_reframe_iou``): a box from another face detector rather than from landmarks."""
        finite = points[np.isfinite(points).all(axis=1)]
        if len(finite) == 0:
            return False
        return iou(box, as_box(box_from_points(finite))) < self.options.caller_reframe_iou

    def crops(self, image: Image, framings: Sequence[Framing]) -> list[Crop]:
        return [face_crop(image, f, self.input_size) for f in framings]

    def steps(
        self,
        image: Image,
        faces: Sequence[FaceBox] | None = None,
        max_faces: int | None = None,
        pose: bool = True,
        passes: int | None = None,
    ) -> Steps:
        """The whole path for one photo; ``faces`` ``None`` runs the detector. Yields crops, receives landmarks.
        ``pose=False`` leaves the pose to the caller (video fits it to the smoothed points); ``passes`` per face
        (default: :meth:`passes_for`'s)."""
        if passes is not None:
            check_passes(passes)
        timings: dict[str, float] = {}
        if faces is None:
            t0 = time.perf_counter()
            faces = self.detect(image, max_faces)
            timings["detect"] = 1000 * (time.perf_counter() - t0)
        counts = [self.passes_for(f, passes) for f in faces]
        framings = [self.framing(f) for f in faces]
        t0 = time.perf_counter()
        crops = self.crops(image, framings)
        timings["crop"] = 1000 * (time.perf_counter() - t0)
        results = (yield crops) if crops else []
        check_count(results, crops)
        if passes is None:
            for i, face in enumerate(faces):
                if face.source == "caller" and self.framed_unlike_landmarks(face.box, results[i].points):
                    counts[i] = 2
        history: dict[int, list[Landmarks]] = {i: [results[i]] for i, n in enumerate(counts) if n > 1}
        for done in range(1, max(counts, default=1)):
            again = [i for i, n in enumerate(counts) if n > done]
            for i in again:  # caller boxes are never rotated (:meth:`framing`)
                framings[i] = refine(results[i].points, self.options.align and faces[i].source != "caller")
            t0 = time.perf_counter()
            crops = self.crops(image, [framings[i] for i in again])
            timings["crop"] += 1000 * (time.perf_counter() - t0)
            later = yield crops
            check_count(later, crops)
            for i, result in zip(again, later, strict=True):
                results[i] = result
                history[i].append(result)
        for i, each in history.items():
            if len(each) >= 3:  # the mean of the three; two passes serve the second's (module docstring)
                results[i] = mean_landmarks(each)
        t0 = time.perf_counter()
        faces_out = [
            Face(fr.box, f.source, f.detection_score, r, self.pose(r) if pose else None)
            for f, fr, r in zip(faces, framings, results, strict=True)
        ]
        if self.head is not None and pose:
            timings["pose"] = 1000 * (time.perf_counter() - t0)
        return PhotoResult(faces_out, timings)

    def run(
        self, image: Image, infer: Infer, faces: Sequence[FaceBox] | None = None, max_faces: int | None = None
    ) -> PhotoResult:
        """One photo with a plain ``infer`` call."""
        return drive(self.steps(image, faces, max_faces), infer)

    def run_many(
        self,
        photos: Sequence[tuple[Image, Sequence[FaceBox] | None]],
        infer: Infer,
        batch_size: int,
        max_faces: int | None = None,
        passes: int | None = None,
    ) -> list[PhotoResult]:
        """Several photos with their faces' crops batched together (``batch_size`` faces per ``infer`` call):
        every photo's first pass, then every photo's second pass, and so on (``passes`` as :meth:`steps`)."""
        running = [self.steps(image, faces, max_faces, passes=passes) for image, faces in photos]
        outs = [advance(s, None) for s in running]
        while pending := [i for i, out in enumerate(outs) if not isinstance(out, PhotoResult)]:
            crops = [c for i in pending for c in outs[i]]  # type: ignore[union-attr]
            results: list[Landmarks] = []
            for start in range(0, len(crops), batch_size):
                results += infer(crops[start : start + batch_size])
            check_count(results, crops)
            at = 0
            for i in pending:
                n = len(outs[i])  # type: ignore[arg-type]
                outs[i] = advance(running[i], results[at : at + n])
                at += n
        return outs  # type: ignore[return-value]


def check_count(results: Sequence[Landmarks], crops: Sequence[Crop]) -> None:
    if len(results) != len(crops):
        raise RuntimeError(f"infer returned {len(results)} results for {len(crops)} crops")

"""Face detection with YuNet (ONNX, run by OpenCV's ``cv2.FaceDetectorYN``; no extra dependency, no download).

The model file ships in ``model/weights/yunet/`` with its licence (Apache-2.0) and provenance, and is checked
against its sha256 at load. Images are downscaled to ``max_side`` for detection (YuNet was made for faces of
about 10-300 px). Each detection has YuNet's score and its five points (the subject's right eye, left eye, nose
tip, right and left mouth corner, in image pixels); its box is YuNet's box mapped to our landmark-box
convention (the tight box around the 68 points, :mod:`model.geometry`) by a centre offset and size factors
fitted on the AFLW2000-3D and 300-W train splits (``python -m training.fit_detector``, :data:`BOX_MAP`).

Faces are returned largest first (box area; ties by score), so ``max_faces`` keeps the most prominent ones.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from model.geometry import Box, line_roll

YUNET_PATH = Path(__file__).resolve().parent / "weights" / "yunet" / "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


class DetectorError(RuntimeError):
    """The detector model is missing, altered or cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class DetectorOptions:
    """YuNet's settings (``LANDMARKS_DETECTOR_*``)."""

    max_side: int = 640  # images are downscaled to this long side for detection
    score_threshold: float = 0.5
    nms_threshold: float = 0.3
    min_face_px: float = 16.0  # shorter box side, original pixels


@dataclass(frozen=True)
class BoxMap:
    """Landmark box from a detector box ``(x, y, w, h)``: centre + (dx * w, dy * h), size (sw * w, sh * h)."""

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(self, x: float, y: float, w: float, h: float) -> Box:
        cx, cy = x + w / 2 + self.dx * w, y + h / 2 + self.dy * h
        half_w, half_h = self.sw * w / 2, self.sh * h / 2
        return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


# Fitted by `python -m training.fit_detector` on the AFLW2000-3D (1,400) and 300-W subset (1,087) train splits:
# medians over the matched faces (`model/weights/yunet/box_map_fit.json`).
BOX_MAP = BoxMap(dx=0.0, dy=0.118, sw=1.027, sh=0.761)  # 2,477 of 2,487 faces matched; median IoU 0.70 -> 0.87


@dataclass(frozen=True)
class Detection:
    """A face: ``box`` (x1, y1, x2, y2) in the landmark-box convention, ``score`` in (0, 1], and the detector's
    five points ``(5, 2)`` (right eye, left eye, nose tip, right and left mouth corner) when it gives them."""

    box: Box
    score: float
    points: tuple[tuple[float, float], ...] = ()

    @property
    def roll(self) -> float:
        """In-plane rotation of the face in degrees, from the eye line (0 upright; 0 without points)."""
        if len(self.points) < 2:
            return 0.0
        return line_roll(np.asarray(self.points[0]), np.asarray(self.points[1]))


def read_model(path: Path, sha256: str | None) -> bytes:
    """The model file's bytes, read once; a missing or altered file is refused with a message that names it."""
    try:
        data = path.read_bytes()
    except OSError:
        raise DetectorError(f"face detector model {path} does not exist or cannot be read") from None
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise DetectorError(f"face detector model {path} has sha256 {digest}, expected {sha256}")
    return data


class YuNetDetector:
    """YuNet on a downscaled BGR copy of the image; thread-safe (one OpenCV detector per thread)."""

    def __init__(
        self,
        max_side: int = 640,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        min_face_px: float = 16.0,
        model_path: Path = YUNET_PATH,
        sha256: str | None = YUNET_SHA256,
        box_map: BoxMap | None = BOX_MAP,
    ) -> None:
        self._model = np.frombuffer(read_model(model_path, sha256), np.uint8)  # every thread's net is built from it
        self.model_path = model_path
        self.max_side = max_side
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.min_face_px = min_face_px
        self.box_map = box_map  # None: YuNet's own boxes (what training.fit_detector fits the map on)
        self._local = threading.local()
        self._net()  # fail at start, not on the first request

    @classmethod
    def from_options(cls, options: DetectorOptions) -> YuNetDetector:
        return cls(options.max_side, options.score_threshold, options.nms_threshold, options.min_face_px)

    def _net(self) -> cv2.FaceDetectorYN:
        net = getattr(self._local, "net", None)
        if net is None:
            try:
                net = cv2.FaceDetectorYN.create(
                    "onnx", self._model, np.empty(0, np.uint8), (320, 320), self.score_threshold,
                    self.nms_threshold, 5000,
                )  # fmt: skip
            except cv2.error as exc:
                raise DetectorError(f"face detector model {self.model_path} cannot be loaded: {exc}") from exc
            self._local.net = net
        return net

    def __call__(self, image: NDArray[np.uint8]) -> list[Detection]:
        """Faces in an RGB (or grey) uint8 image, largest first."""
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR)
        height, width = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        net = self._net()
        net.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, faces = net.detect(bgr)
        found: list[Detection] = []
        for row in np.zeros((0, 15)) if faces is None else faces:
            sx, sy = width / bgr.shape[1], height / bgr.shape[0]
            x, y, w, h = float(row[0]) * sx, float(row[1]) * sy, float(row[2]) * sx, float(row[3]) * sy
            if min(w, h) < self.min_face_px:
                continue
            box = self.box_map.apply(x, y, w, h) if self.box_map is not None else (x, y, x + w, y + h)
            points = tuple((float(row[4 + 2 * k]) * sx, float(row[5 + 2 * k]) * sy) for k in range(5))
            found.append(Detection(box, float(row[14]), points))
        return sorted(found, key=lambda d: (-(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]), -d.score))


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_detection(detections: list[Detection], truth_box: NDArray[np.floating]) -> Detection | None:
    """The detection of a known face: its centre inside ``truth_box``; the best overlap if several."""
    x1, y1, x2, y2 = (float(v) for v in truth_box)
    inside = [d for d in detections if x1 <= (d.box[0] + d.box[2]) / 2 <= x2 and y1 <= (d.box[1] + d.box[3]) / 2 <= y2]
    if not inside:
        return None
    return max(inside, key=lambda d: iou(d.box, (x1, y1, x2, y2)))

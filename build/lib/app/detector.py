"""Offline face detection with the Haar cascades that opencv-python-headless 4.x ships (no downloads).

Frontal faces come from ``haarcascade_frontalface_alt2``; turned faces from ``haarcascade_profileface`` run on
the image and on its mirror (the cascade only knows one side). Overlapping detections are merged by
non-maximum suppression, frontal first.

The cascades' boxes are square and framed differently from our convention (the tight box around the 68
landmarks, :mod:`model.geometry`), so each cascade's box is mapped with a centre offset and a size factor fitted
on the AFLW2000-3D train split by ``python -m training.fit_detector`` (numbers in :data:`BOX_MAPS`).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray


class DetectorError(RuntimeError):
    """The cascade files are missing (opencv-python-headless 5.x ships none)."""


@dataclass(frozen=True)
class BoxMap:
    """Landmark box from a cascade box ``(x, y, w, h)``: centre + (dx * w, dy * h), size (sw * w, sh * h)."""

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(
        self, x: float, y: float, w: float, h: float, mirrored: bool = False
    ) -> tuple[float, float, float, float]:
        dx = -self.dx if mirrored else self.dx
        cx, cy = x + (w - 1) / 2 + dx * w, y + (h - 1) / 2 + self.dy * h
        half_w, half_h = self.sw * w / 2, self.sh * h / 2
        return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


# Fitted by `python -m training.fit_detector` on the AFLW2000-3D train split (medians over matched faces).
BOX_MAPS: dict[str, BoxMap] = {
    "frontal": BoxMap(dx=-0.011, dy=0.143, sw=0.857, sh=0.850),  # 800 faces
    "profile": BoxMap(dx=0.012, dy=0.138, sw=0.681, sh=0.736),  # 247 faces (recall 74.8 % of 1,400)
}


@dataclass(frozen=True)
class Detection:
    """A face: ``box`` (x1, y1, x2, y2) in the landmark-box convention, ``score`` in (0, 1), cascade ``kind``."""

    box: tuple[float, float, float, float]
    score: float
    kind: str


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class HaarDetector:
    """Frontal + profile Haar cascades on a downscaled grey image; thread-safe (one classifier set per thread)."""

    def __init__(
        self,
        max_side: int = 640,
        min_face_fraction: float = 0.08,
        min_neighbors: int = 4,
        profile: bool = True,
        box_maps: dict[str, BoxMap] | None = None,
        map_boxes: bool = True,
    ) -> None:
        root = Path(getattr(getattr(cv2, "data", None), "haarcascades", ""))
        self._paths = {"frontal": root / "haarcascade_frontalface_alt2.xml"}
        if profile:
            self._paths["profile"] = root / "haarcascade_profileface.xml"
        missing = [str(p) for p in self._paths.values() if not p.is_file()]
        if missing:
            raise DetectorError(
                f"Haar cascade files not found ({', '.join(missing)}); install opencv-python-headless<5"
            )
        self.max_side = max_side
        self.min_face_fraction = min_face_fraction
        self.min_neighbors = min_neighbors
        self.box_maps = box_maps or BOX_MAPS
        self.map_boxes = map_boxes  # False: the cascades' own boxes (used to fit BOX_MAPS)
        self._local = threading.local()

    def _cascade(self, kind: str) -> cv2.CascadeClassifier:
        # A CascadeClassifier must not be shared between threads and costs 10-17 ms to load: one per thread.
        cache: dict[str, cv2.CascadeClassifier] = self._local.__dict__.setdefault("cascades", {})
        if kind not in cache:
            cache[kind] = cv2.CascadeClassifier(str(self._paths[kind]))
        return cache[kind]

    def __call__(self, image: NDArray[np.uint8]) -> list[Detection]:
        """Faces in an RGB (or grey) uint8 image, best first."""
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.max_side / max(grey.shape[:2]))
        if scale < 1.0:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        min_size = max(20, int(self.min_face_fraction * min(grey.shape[:2])))
        found: list[Detection] = []
        for kind in self._paths:
            cascade = self._cascade(kind)
            views = [(grey, False)] + ([(grey[:, ::-1].copy(), True)] if kind == "profile" else [])
            for view, mirrored in views:
                rects, _, weights = cascade.detectMultiScale3(
                    view,
                    scaleFactor=1.1,
                    minNeighbors=self.min_neighbors,
                    minSize=(min_size, min_size),
                    outputRejectLevels=True,
                )
                for (x, y, w, h), weight in zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=True):
                    if mirrored:
                        x = view.shape[1] - x - w
                    bx, by, bw, bh = (float(v) / scale for v in (x, y, w, h))
                    box = (
                        self.box_maps[kind].apply(bx, by, bw, bh, mirrored)
                        if self.map_boxes
                        else (bx, by, bx + bw, by + bh)
                    )
                    score = 1.0 / (1.0 + math.exp(-float(weight)))
                    found.append(Detection(box, score, kind + ("_mirrored" if mirrored else "")))
        return _nms(found)


def _nms(detections: list[Detection], threshold: float = 0.3) -> list[Detection]:
    # Frontal detections win over profile ones, then higher score.
    order = sorted(detections, key=lambda d: (not d.kind.startswith("frontal"), -d.score))
    kept: list[Detection] = []
    for det in order:
        if all(_iou(det.box, k.box) < threshold for k in kept):
            kept.append(det)
    return sorted(kept, key=lambda d: -d.score)


def match_detection(detections: list[Detection], truth_box: NDArray[np.floating]) -> Detection | None:
    """The detection of a known face: its centre inside ``truth_box``; the best overlap if several."""
    x1, y1, x2, y2 = (float(v) for v in truth_box)
    inside = [d for d in detections if x1 <= (d.box[0] + d.box[2]) / 2 <= x2 and y1 <= (d.box[1] + d.box[3]) / 2 <= y2]
    if not inside:
        return None
    return max(inside, key=lambda d: _iou(d.box, (x1, y1, x2, y2)))

"""Peer comparison with dlib's 68-point shape predictor on the AFLW2000-3D val split.

    pip install dlib-bin face-recognition-models    # both ship their weights
    python -m benchmarks.peer_dlib [--out FILE]

Same 200 faces, boxes from the ground-truth landmarks for both methods, each in its own convention: ours takes
the tight landmark box; dlib's predictor was trained on its HOG detector's framing, so the tight box is mapped to
that framing with a median offset/scale fitted on the train split (dlib's detections matched to ground truth).
Also reports both with their own detectors (ours also with the service's default second pass).
Timing: single face, single thread pair, median over the split.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from app.detector import HaarDetector, match_detection
from app.settings import DEFAULT_CHECKPOINT
from benchmarks.common import machine, table
from model.checkpoint import load_for_inference
from model.geometry import box_from_points, crop_matrix, invert, warp
from training.datasets import Sample, load_image, read_aflw2000
from training.metrics import box_size, nme, summarise

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aflw2000-3d"


def dlib_model_path() -> Path:
    # face_recognition_models' own __init__ needs pkg_resources; only its data file is wanted here.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install dlib-bin face-recognition-models")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"


def tight(points: np.ndarray) -> np.ndarray:
    return np.array([*points.min(0), *points.max(0)])


def fit_dlib_framing(detector, samples: list[Sample]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Median (dx, dy, sw, sh) from tight box to dlib's detector box, relative to the tight box size."""
    rows = []
    for s in samples:
        gt = tight(s.points)
        w, h = gt[2] - gt[0], gt[3] - gt[1]
        for r in detector(load_image(s.image), 0):
            cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
            if gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]:
                rows.append(
                    ((cx - (gt[0] + gt[2]) / 2) / w, (cy - (gt[1] + gt[3]) / 2) / h, r.width() / w, r.height() / h)
                )
                break
    return np.median(np.array(rows), axis=0)


def to_dlib_rect(box: np.ndarray, framing: np.ndarray):  # type: ignore[no-untyped-def]
    import dlib

    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2 + framing[0] * w, (box[1] + box[3]) / 2 + framing[1] * h
    hw, hh = framing[2] * w / 2, framing[3] * h / 2
    return dlib.rectangle(int(round(cx - hw)), int(round(cy - hh)), int(round(cx + hw)), int(round(cy + hh)))


def run_dlib(predictor, images, rects) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    out, times = [], []
    for image, rect in zip(images, rects, strict=True):
        t0 = time.perf_counter()
        shape = predictor(image, rect)
        times.append(time.perf_counter() - t0)
        out.append([(shape.part(i).x, shape.part(i).y) for i in range(68)])
    return np.array(out, dtype=np.float64), 1000 * float(np.median(times))


def run_ours(engine, images, boxes, second_pass: bool = False) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    """``second_pass``: re-crop from the first pass's landmarks, as the service does by default (timed as one)."""
    size = engine.config.input_size
    out, times = [], []
    for image, box in zip(images, boxes, strict=True):
        t0 = time.perf_counter()
        for _ in range(2 if second_pass else 1):
            m = crop_matrix(box, size)
            crop = torch.from_numpy(warp(image, m, size))[None]
            points = engine(crop, torch.from_numpy(invert(m)).float()[None]).points[0].double().numpy()
            box = box_from_points(points)
        times.append(time.perf_counter() - t0)
        out.append(points)
    return np.array(out), 1000 * float(np.median(times))


def main() -> None:
    import dlib

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    val = read_aflw2000(DATA, "val")
    images = [load_image(s.image) for s in val]
    gt = np.stack([s.points for s in val])
    norm = box_size(gt)
    hog = dlib.get_frontal_face_detector()
    framing = fit_dlib_framing(hog, read_aflw2000(DATA, "train"))
    predictor = dlib.shape_predictor(str(dlib_model_path()))
    engine = load_for_inference(args.checkpoint, "cpu", args.precision)

    rows = []
    dl_pts, dl_ms = run_dlib(predictor, images, [to_dlib_rect(tight(p), framing) for p in gt])
    rows.append(
        [
            "dlib shape_predictor_68",
            "ground truth (mapped to dlib framing)",
            len(val),
            *summary(dl_pts, gt, norm),
            f"{dl_ms:.2f}",
        ]
    )
    our_pts, our_ms = run_ours(engine, images, [tight(p) for p in gt])
    rows.append(
        [
            f"ours ({engine.config.name}, {args.precision})",
            "ground truth (tight box)",
            len(val),
            *summary(our_pts, gt, norm),
            f"{our_ms:.2f}",
        ]
    )

    # Each with its own detector, on the faces that detector finds.
    found = [
        (i, r) for i, image in enumerate(images) for r in hog(image, 1)[:1] if match_detection_dlib(r, tight(gt[i]))
    ]
    if found:
        idx = [i for i, _ in found]
        pts, ms = run_dlib(predictor, [images[i] for i in idx], [r for _, r in found])
        rows.append(
            [
                "dlib shape_predictor_68",
                f"dlib HOG detector ({len(idx)}/{len(val)} found)",
                len(idx),
                *summary(pts, gt[idx], norm[idx]),
                f"{ms:.2f}",
            ]
        )
    haar = HaarDetector()
    ours_found = [(i, d) for i, image in enumerate(images) if (d := match_detection(haar(image), tight(gt[i])))]
    if ours_found:
        idx = [i for i, _ in ours_found]
        for second_pass in (False, True):
            pts, ms = run_ours(
                engine, [images[i] for i in idx], [np.asarray(d.box) for _, d in ours_found], second_pass
            )
            passes = " + second pass (service default)" if second_pass else ""
            rows.append(
                [
                    f"ours ({engine.config.name}, {args.precision})",
                    f"service Haar detector ({len(idx)}/{len(val)} found){passes}",
                    len(idx),
                    *summary(pts, gt[idx], norm[idx]),
                    f"{ms:.2f}",
                ]
            )
    lines = [
        f"Machine: {machine()}",
        f"AFLW2000-3D val split (2D re-annotation labels), box-normalised NME (%). "
        f"dlib framing fitted on train: dx={framing[0]:.3f} dy={framing[1]:.3f} sw={framing[2]:.3f} "
        f"sh={framing[3]:.3f}",
        "",
        table(["method", "boxes", "faces", "NME mean", "NME median", "AUC@0.07", "fail@0.10", "ms / face"], rows),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def match_detection_dlib(rect, box: np.ndarray) -> bool:  # type: ignore[no-untyped-def]
    cx, cy = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
    return bool(box[0] <= cx <= box[2] and box[1] <= cy <= box[3])


def summary(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray) -> list[str]:
    s = summarise(nme(pred, gt, norm))
    return [f"{s['nme_mean']:.2f}", f"{s['nme_median']:.2f}", f"{s['auc_0.07']:.1f}", f"{s['failure_0.10']:.1f}"]


if __name__ == "__main__":
    main()

"""Peer comparison with dlib's 68-point shape predictor on the AFLW2000-3D and 300-W subset test (or val) splits.

    pip install dlib-bin face-recognition-models    # both ship their weights
    python -m benchmarks.peer_dlib [--split test] [--out FILE]

dlib's 68-point model was trained on the 300-W training data (HELEN, LFPW and AFW train faces), which is where the
300-W subset's val and test faces come from: its 300-W numbers here are in-sample for it. For each set
(AFLW2000-3D: box-normalised NME; 300-W: inter-ocular):

* both methods with boxes from the ground-truth landmarks, each in its own convention: ours takes the tight
  landmark box; dlib's predictor was trained on its HOG detector's framing, so the tight box is mapped to that
  framing with a median offset/scale fitted on the same data set's train split (dlib's detections matched to
  ground truth);
* each with its own detector on the faces that detector finds (ours: the service's YuNet and its default second
  pass, through ``model.pipeline``), and both on the faces both detectors find.

Timing: one face at a time, median over the split (ours includes both passes where it runs two).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, table
from model.artifacts import SHIPPED_CHECKPOINT
from model.detector import YuNetDetector, match_detection
from model.engine import EngineOptions
from model.geometry import as_box, box_from_points
from model.inference import InferenceModel, load_for_inference
from model.landmarker import Landmarker
from model.pipeline import FaceBox, Pipeline, PipelineOptions, caller_faces
from training.datasets import Sample, load_image, load_samples
from training.metrics import NORMALISERS, nme, summarise

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {  # name: (format, root, labels, normalisation)
    "AFLW2000-3D": ("aflw2000", SHARED / "aflw2000-3d", "pts", "box"),
    "300-W subset": ("pts_folder", SHARED / "300w-subset", None, "inter_ocular"),
}


def dlib_model_path() -> Path:
    # face_recognition_models' own __init__ needs pkg_resources; only its data file is wanted here.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install dlib-bin face-recognition-models")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"


def centre_inside(rect: Any, box: np.ndarray) -> bool:
    cx, cy = (rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2
    return bool(box[0] <= cx <= box[2] and box[1] <= cy <= box[3])


def fit_dlib_framing(hog: Any, samples: list[Sample]) -> np.ndarray:
    """Median (dx, dy, sw, sh) from tight box to dlib's detector box, relative to the tight box size."""
    rows = []
    for s in samples:
        gt = box_from_points(s.points)
        w, h = gt[2] - gt[0], gt[3] - gt[1]
        for r in hog(load_image(s.image), 0):
            if centre_inside(r, gt):
                cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
                rows.append(
                    ((cx - (gt[0] + gt[2]) / 2) / w, (cy - (gt[1] + gt[3]) / 2) / h, r.width() / w, r.height() / h)
                )
                break
    return np.median(np.array(rows), axis=0)


def to_dlib_rect(box: np.ndarray, framing: np.ndarray) -> Any:
    import dlib

    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2 + framing[0] * w, (box[1] + box[3]) / 2 + framing[1] * h
    hw, hh = framing[2] * w / 2, framing[3] * h / 2
    return dlib.rectangle(round(cx - hw), round(cy - hh), round(cx + hw), round(cy + hh))


def timed(fn: Callable[[int], np.ndarray], count: int) -> tuple[np.ndarray, float]:
    out, times = [], []
    for i in range(count):
        t0 = time.perf_counter()
        out.append(fn(i))
        times.append(time.perf_counter() - t0)
    return np.array(out, dtype=np.float64), 1000 * float(np.median(times))


def dlib_points(predictor: Any, image: np.ndarray, rect: Any) -> np.ndarray:
    shape = predictor(image, rect)
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)


def our_points(landmarker: Landmarker, image: np.ndarray, face: FaceBox) -> np.ndarray:
    """One face through the service's pipeline (a detected face gets the second pass, a given box does not)."""
    return landmarker.run([(image, [face])])[0].faces[0].landmarks.points


def summary(pred: np.ndarray, gt: np.ndarray, norm: np.ndarray) -> list[str]:
    s = summarise(nme(pred, gt, norm))
    return [f"{s['nme_mean']:.2f}", f"{s['nme_median']:.2f}", f"{s['auc_0.07']:.1f}", f"{s['failure_0.10']:.1f}"]


def compare(
    name: str, split: str, engine: InferenceModel, predictor: Any, hog: Any, yunet: YuNetDetector
) -> list[list[object]]:
    fmt, root, labels, norm_name = SETS[name]
    val = load_samples(fmt, root, split, labels)
    framing = fit_dlib_framing(hog, load_samples(fmt, root, "train", labels))
    images = [load_image(s.image) for s in val]
    gt = np.stack([s.points for s in val])
    norm = NORMALISERS[norm_name](gt)
    tight = [box_from_points(p) for p in gt]
    ours = f"ours ({engine.config.name}, {engine.precision})"
    landmarker = Landmarker(engine, Pipeline(PipelineOptions(), engine.config.input_size), batch_size=1)
    rows: list[list[object]] = []

    def row(method: str, boxes: str, idx: list[int], pts: np.ndarray, ms: float) -> None:
        rows.append([f"{name} {split}", method, boxes, len(idx), *summary(pts, gt[idx], norm[idx]), f"{ms:.2f}"])

    every = list(range(len(val)))
    pts, ms = timed(lambda i: dlib_points(predictor, images[i], to_dlib_rect(tight[i], framing)), len(val))
    row("dlib shape_predictor_68", "ground truth (mapped to dlib framing)", every, pts, ms)
    pts, ms = timed(lambda i: our_points(landmarker, images[i], caller_faces([as_box(tight[i])])[0]), len(val))
    row(ours, "ground truth (tight box)", every, pts, ms)

    hog_found = {i: r for i in every for r in hog(images[i], 1)[:1] if centre_inside(r, tight[i])}
    yunet_found = {i: d for i in every if (d := match_detection(yunet(images[i]), tight[i])) is not None}
    both = sorted(set(hog_found) & set(yunet_found))
    for label, idx in ((f"own detector ({{}}/{len(val)} found)", None), (f"faces both find ({len(both)})", both)):
        d_idx = sorted(hog_found) if idx is None else idx
        y_idx = sorted(yunet_found) if idx is None else idx

        def run_dlib(k: int, d_idx: list[int] = d_idx) -> np.ndarray:
            return dlib_points(predictor, images[d_idx[k]], hog_found[d_idx[k]])

        def run_ours(k: int, y_idx: list[int] = y_idx) -> np.ndarray:
            return our_points(landmarker, images[y_idx[k]], FaceBox(yunet_found[y_idx[k]].box, "detector"))

        pts, ms = timed(run_dlib, len(d_idx))
        row("dlib shape_predictor_68", "HOG: " + label.format(len(d_idx)), d_idx, pts, ms)
        pts, ms = timed(run_ours, len(y_idx))
        row(ours, "YuNet + second pass (service default): " + label.format(len(y_idx)), y_idx, pts, ms)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--split", default="test", help="the split to report on (dlib's framing is fitted on train)")
    parser.add_argument("--out", type=Path)
    return parser


def main(args: argparse.Namespace) -> str:
    import dlib

    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path()))
    engine = load_for_inference(args.checkpoint, EngineOptions(device="cpu", precision=args.precision))
    yunet = YuNetDetector()
    rows = [r for name in SETS for r in compare(name, args.split, engine, predictor, hog, yunet)]
    lines = [
        f"Machine: {machine()}",
        f"Checkpoint: {args.checkpoint.name} ({engine.metadata.get('version')}), precision {args.precision}, "
        f"annotation convention {engine.convention_name} (the served default). "
        "NME (%): box-normalised on AFLW2000-3D, inter-ocular on 300-W.",
        "",
        table(
            ["set", "method", "boxes", "faces", "NME mean", "NME median", "AUC@0.07", "fail@0.10", "ms / face"],
            rows,
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main(get_args_parser().parse_args())

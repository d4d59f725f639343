"""Passes for a caller's boxes, chosen on val: ``python -m benchmarks.caller_boxes [--out FILE]``.

``POST /landmarks`` takes boxes from the caller. Two kinds reach it: the tight box around a face's 68 points
(what the API documents, and how evaluation with ground-truth boxes calls it) and a box from the user's own
face detector, which frames the face differently (dlib's HOG detector here, the box as dlib gives it, found on
each val and test photo of both datasets: the detection whose centre lies in the ground-truth box with the
largest overlap, at least :data:`MIN_IOU`). Each kind goes through the service's pipeline as a caller's box with
1, 2 and 3 passes (a request's ``passes``: a pass after the first is framed from the previous pass's
landmarks; three serve the mean of the three), and with the default (no ``passes``): one pass, and a second
when the box's IoU with the tight box of the first pass's landmarks is under
``PipelineOptions.caller_reframe_iou``, the sign of another detector's framing. fp32.

Chosen on val only: the pass count for each kind of box, whose smaller gain over one pass (of the two sets) is
largest, one pass gaining 0 (the rule of :mod:`benchmarks.passes`); and the re-framing threshold (a grid of
IoUs) whose largest regret over the four val rows (set x kind of box) is smallest, a row's regret being the
default's NME minus the better of one and two passes there. The test rows are reported, never used to choose.
Needs ``pip install dlib-bin`` (as :mod:`benchmarks.peer_dlib`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine, publish, table
from benchmarks.passes import paired_gain
from benchmarks.peer_dlib import centre_inside
from model.artifacts import SHIPPED_CHECKPOINT
from model.detector import iou
from model.engine import EngineOptions
from model.geometry import Box, as_box, box_from_points
from model.inference import load_for_inference
from model.pipeline import PipelineOptions, caller_faces
from training.datasets import Sample, load_image, load_samples
from training.evaluate import run
from training.metrics import NORMALISERS, nme

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = [  # (name, format, root, labels, norm): AFLW2000-3D in the served convention, as the service answers
    ("AFLW2000-3D", "aflw2000", SHARED / "aflw2000-3d", "pts", "box"),
    ("300-W", "pts_folder", SHARED / "300w-subset", None, "inter_ocular"),
]
KINDS = ("tight landmark box", "dlib HOG detector box")
PASSES = (1, 2, 3)
MIN_IOU = 0.3  # a dlib detection counts as the face's box from this overlap with the ground-truth box
THRESHOLDS = np.round(np.arange(0.70, 0.96, 0.01), 2)  # the re-framing IoUs tried


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    p.add_argument("--out", type=Path, default=None)
    return p


def dlib_boxes(hog: Any, samples: list[Sample]) -> tuple[list[Sample], list[Box]]:
    """The samples dlib's detector finds and its box for each, as dlib gives it (upsampled once): the detection
    whose centre lies in the ground-truth box with the largest overlap, if that overlap (IoU) is at least
    :data:`MIN_IOU` (a small detection inside a face's box is another face or a part of one, not its box)."""
    kept, boxes = [], []
    for s in samples:
        truth = box_from_points(s.points)
        found = [
            (float(r.left()), float(r.top()), float(r.right()), float(r.bottom()))
            for r in hog(load_image(s.image), 1)
            if centre_inside(r, truth)
        ]
        best = max(found, key=lambda b: iou(b, as_box(truth)), default=None)
        if best is not None and iou(best, as_box(truth)) >= MIN_IOU:
            kept.append(s)
            boxes.append(best)
    return kept, boxes


def choose(gains: dict[int, tuple[float, float]], other: dict[int, tuple[float, float]]) -> int:
    """The pass count whose smaller gain over one pass on the two sets is largest (one pass: gain 0), the rule
    :mod:`benchmarks.passes` uses."""
    return max(PASSES, key=lambda p: min(gains[p][0], other[p][0]))


def choose_threshold(val: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The re-framing IoU with the smallest largest regret over the val rows, and that regret; ``val`` maps a row
    to each face's NME with 1 and 2 passes and its box's IoU with the first pass's landmark box."""

    def regret(t: float) -> float:
        return max(float(np.where(u < t, e2, e1).mean()) - min(e1.mean(), e2.mean()) for e1, e2, u in val.values())

    best = min(THRESHOLDS, key=regret)
    return float(best), regret(best)


def main(args: argparse.Namespace) -> str:
    import dlib

    hog = dlib.get_frontal_face_detector()
    engine = load_for_inference(args.checkpoint, EngineOptions(device="cpu", precision="fp32", cuda_graphs=False))
    served = PipelineOptions().caller_reframe_iou
    rows: list[list[object]] = []
    gains: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}  # (kind, set) -> passes -> val gain
    val: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # (kind, set) -> e1, e2, IoU
    for name, fmt, root, labels, norm in SETS:
        for split in ("val", "test"):
            samples = load_samples(fmt, root, split, labels)
            given = {
                KINDS[0]: (samples, [as_box(box_from_points(s.points)) for s in samples]),
                KINDS[1]: dlib_boxes(hog, samples),
            }
            for kind, (chosen, boxes) in given.items():
                truth = np.stack([s.points for s in chosen])
                scale = NORMALISERS[norm](truth)
                found = (chosen, caller_faces(boxes))
                points = {p: run(engine, chosen, "gt", found=found, passes=p).points for p in (*PASSES, None)}
                errors = {p: 100 * nme(pts, truth, scale) for p, pts in points.items()}
                overlap = np.array([iou(b, as_box(box_from_points(p))) for b, p in zip(boxes, points[1], strict=True)])
                reframed = float((overlap < served).mean())
                rows.append([name, split, kind, len(chosen), *(f"{errors[p].mean():.3f}" for p in PASSES),
                             f"{errors[None].mean():.3f} ({100 * reframed:.1f} % re-framed)"])  # fmt: skip
                if split == "val":
                    gains[kind, name] = {p: paired_gain(errors[1], errors[p]) for p in PASSES}
                    val[kind, name] = (errors[1], errors[2], overlap)
                print(rows[-1], flush=True)
    names = [s[0] for s in SETS]
    chosen_passes = {kind: choose(gains[kind, names[0]], gains[kind, names[1]]) for kind in KINDS}
    threshold, worst = choose_threshold(val)
    lines = [
        "# Passes for a caller's boxes, chosen on val",
        "",
        f"`python -m benchmarks.caller_boxes` on {machine()}; checkpoint `{args.checkpoint}`; fp32. NME mean %: "
        "AFLW2000-3D by the box (served convention), 300-W inter-ocular. Each face is given to the pipeline as a "
        "caller's box: the tight box of its ground-truth landmarks, or dlib's HOG detector's box as dlib gives it "
        f"(on the faces dlib finds: centre in the ground-truth box, IoU at least {MIN_IOU}). 3 passes serve the "
        f"mean of the three. Default: a request without `passes`, one pass and a second where the box's IoU with "
        f"the first pass's landmark box is under {served} (`PipelineOptions.caller_reframe_iou`).",
        "",
        table(
            [
                "set",
                "split",
                "caller's box",
                "faces",
                *(f"{p} pass{'es' if p > 1 else ''}" for p in PASSES),
                "default (served)",
            ],
            rows,
        ),  # fmt: skip
        "",
        "Gain over one pass on val, NME points ± paired standard error over the faces:",
        "",
        table(
            ["caller's box", "set", *(f"{p} passes" for p in PASSES[1:])],
            [
                [kind, n, *(f"{gains[kind, n][p][0]:+.3f} ± {gains[kind, n][p][1]:.3f}" for p in PASSES[1:])]
                for kind in KINDS
                for n in names
            ],  # fmt: skip
        ),
        "",
        "Chosen on val: pass count (the one whose smaller gain of the two sets is largest; one pass gains 0): "
        + "; ".join(f"{kind}: {chosen_passes[kind]}" for kind in KINDS)
        + f". Re-framing threshold (IoUs {THRESHOLDS[0]:.2f}-{THRESHOLDS[-1]:.2f} tried; smallest largest regret "
        f"against the better of one and two passes over the four val rows): **{threshold:.2f}**, regret "
        f"{worst:.3f} NME points; served: {served}.",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

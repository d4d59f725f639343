"""Passes for a caller's boxes, chosen on val: ``python -m benchmarks.caller_boxes [--out FILE]``.

``POST /landmarks`` takes boxes from the caller. Two kinds reach it: the tight box around a face's 68 points
(what the API documents, and how evaluation with ground-truth boxes calls it) and a box from the user's own
face detector, which frames the face differently (dlib's HOG detector here, the box as dlib gives it, found on
each val and test photo of both datasets: the detection whose centre lies in the ground-truth box). Each kind
goes through the service's pipeline as a caller's box with 1, 2 and 3 passes (``passes``: a pass after the
first is framed from the previous pass's landmarks; three serve the mean of the three), fp32.

Chosen on val only, per kind of box: the pass count whose smaller gain over one pass (of the two sets) is
largest, one pass gaining 0 (the rule of :mod:`benchmarks.passes`). The tight box's choice is the default for
caller boxes (a request without ``passes``); the detector box's is what the README tells users with such boxes
to send. Gains are NME points with their paired standard errors over the faces; the test rows are reported,
never used to choose. Needs ``pip install dlib-bin`` (as :mod:`benchmarks.peer_dlib`).
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
from model.pipeline import caller_faces
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


def main(args: argparse.Namespace) -> str:
    import dlib

    hog = dlib.get_frontal_face_detector()
    engine = load_for_inference(args.checkpoint, EngineOptions(device="cpu", precision="fp32", cuda_graphs=False))
    rows: list[list[object]] = []
    gains: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}  # (kind, set) -> passes -> val gain
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
                errors = {p: 100 * nme(run(engine, chosen, "gt", found=found, passes=p).points, truth, scale)
                          for p in PASSES}  # fmt: skip
                rows.append([name, split, kind, len(chosen), *(f"{errors[p].mean():.3f}" for p in PASSES)])
                if split == "val":
                    gains[kind, name] = {p: paired_gain(errors[1], errors[p]) for p in PASSES}
                print(rows[-1], flush=True)
    names = [s[0] for s in SETS]
    chosen_passes = {kind: choose(gains[kind, names[0]], gains[kind, names[1]]) for kind in KINDS}
    lines = [
        "# Passes for a caller's boxes, chosen on val",
        "",
        f"`python -m benchmarks.caller_boxes` on {machine()}; checkpoint `{args.checkpoint}`; fp32. NME mean %: "
        "AFLW2000-3D by the box (served convention), 300-W inter-ocular. Each face is given to the pipeline as a "
        "caller's box: the tight box of its ground-truth landmarks, or dlib's HOG detector's box as dlib gives it "
        f"(on the faces dlib finds: centre in the ground-truth box, IoU at least {MIN_IOU}). 3 passes serve the "
        "mean of the three.",
        "",
        table(["set", "split", "caller's box", "faces", *(f"{p} pass{'es' if p > 1 else ''}" for p in PASSES)], rows),
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
        "Chosen on val (the pass count whose smaller gain of the two sets is largest; one pass gains 0): "
        + "; ".join(f"{kind}: {chosen_passes[kind]}" for kind in KINDS)
        + ". The tight box's count is the default for caller boxes (a request without `passes`); boxes from "
        "another face detector should be sent with the other.",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

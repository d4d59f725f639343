"""Fit each annotation convention on the training faces and store it in a checkpoint:

    python -m training.conventions --checkpoint runs/<run>/best.pt --out model/weights/dsc_landmarks_cpu.pt

The network learns from data sets whose annotators place the same feature a fraction of a pixel apart, the same
way every time (300-W's labels sit right of AFLW2000-3D's re-annotation), and it lands on their average: on the
300-W val faces the shipped network's points sat 0.3 % of the inter-ocular distance left of the labels, on
AFLW2000-3D val 0.4 % of the box right of them. Each convention here is one group of sources' mean residual
(label - prediction) per point on its **training** faces, ground-truth boxes, in units of the longer side of the
predicted points' tight box (:class:`model.codec.Convention`, which the engine adds back to every face it
serves). Sources map to conventions by :data:`CONVENTION_OF` (HELEN, LFPW, AFW and iBUG are 300-W's).

The checkpoint names ``--default`` (300-W's: the convention of in-the-wild 68-point data and of the tools users
compare with) as what it serves unless told otherwise (``LANDMARKS_CONVENTION``, ``--convention``). The val splits
then show, per set, the NME with no convention, with its own and with the default (``conventions.json`` beside
``--out``): the choice to ship them is made there, never on a test split.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from model.checkpoint import load_checkpoint, save_checkpoint
from model.codec import Convention, face_shape
from model.engine import EngineOptions
from model.inference import InferenceModel, load_for_inference
from training.calibrate import DEFAULT_SETS as VAL_SETS
from training.cli import SPEC, checkpoint_to_checkpoint, run_cli
from training.config import REPORT_ONLY_SPLITS
from training.datasets import samples_from_spec
from training.evaluate import run
from training.label_offsets import box_side, group_means
from training.metrics import NORMALISERS, nme

log = logging.getLogger("training.conventions")

Array = NDArray[np.float64]
Predictions = tuple[Array, Array, list[str], str]  # points, labels, each face's convention, the set's name
UNIT = "longer side of the predicted points' tight box"
CONVENTION_OF = {"aflw2000": "aflw2000", "helen": "300w", "lfpw": "300w", "afw": "300w", "ibug": "300w"}
MIN_FACES = 20  # a convention is fitted from at least this many training faces
RIDGE = (0.03, 0.1, 0.3, 1.0, 3.0)  # ridge strengths tried for the shape-dependent part, chosen on val
GATE_PERCENTILE = 99.0  # the default's regression serves the shapes within this share of its training faces
TRAIN_SETS = ("aflw2000:../shared/data/aflw2000-3d:train:pts", "pts_folder:../shared/data/300w-subset:train")


def estimate(pred: Array, gt: Array, conventions: Sequence[str], min_faces: int = 20) -> dict[str, Array]:
    """Per convention, the mean residual (label - prediction) per point, ``(K, 2)`` in predicted box sides.
    Conventions with fewer than ``min_faces`` faces are left out (with a warning)."""
    residual = (np.asarray(gt) - np.asarray(pred)) / box_side(np.asarray(pred))[:, None, None]
    return group_means(residual, conventions, min_faces, "convention")


def as_convention(name: str, offsets: Array, linear: tuple[Array, Array] | None = None) -> Convention:
    mean, matrix = linear if linear is not None else (None, None)
    return Convention(
        name,
        tuple((float(x), float(y)) for x, y in offsets),
        None if mean is None else tuple(float(v) for v in mean),
        None if matrix is None else tuple(tuple(float(v) for v in row) for row in matrix),
    )


def shapes(points: Array) -> tuple[Array, Array]:
    """``(N, 2K)`` shapes and box sides ``(N,)`` as :func:`model.codec.face_shape` makes them for the engine."""
    centred, side = face_shape(torch.from_numpy(np.asarray(points, dtype=np.float64)))
    return centred.numpy(), side.numpy()


def fit_linear(pred: Array, gt: Array, ridge: float) -> tuple[Array, Array, Array]:
    """Ridge regression of the residual (label - prediction, in box sides) on the predicted shape: the intercept
    ``(K, 2)`` (the mean residual, at the mean shape), the mean shape ``(2K,)`` and the matrix ``(2K, 2K)``."""
    x, side = shapes(pred)
    y = ((gt - pred) / side[:, None, None]).reshape(len(pred), -1)
    mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
    a = x - mean_x
    matrix = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (y - mean_y))
    return mean_y.reshape(-1, 2), mean_x, matrix


def apply(convention: Convention | None, points: Array) -> Array:
    """``(N, K, 2)`` image-space points in a convention (the engine applies it in the crop's frame; with
    ground-truth boxes the crop is upright, so the two agree)."""
    return points if convention is None else convention(torch.from_numpy(np.asarray(points))).numpy()


def predict(engine: InferenceModel, spec: str, role: str) -> tuple[Array, Array, list[str], str]:
    """The engine's points on one data set with ground-truth boxes: predictions, labels, each face's convention,
    and the set's name."""
    split = spec.split(":")[2] if spec.count(":") >= 2 else ""
    if split in REPORT_ONLY_SPLITS:
        raise ValueError(f"{spec}: conventions are fitted on train and chosen on val, never on a test split")
    ev = run(engine, samples_from_spec(spec), "gt")
    gt = np.stack([s.points for s in ev.samples])
    unknown = sorted({s.source for s in ev.samples} - set(CONVENTION_OF))
    if unknown:
        raise ValueError(f"{spec} ({role}): sources {unknown} have no convention in CONVENTION_OF")
    _, root, split, *_ = spec.split(":")
    return ev.points, gt, [CONVENTION_OF[s.source] for s in ev.samples], f"{Path(root).name}/{split}"


def val_table(val: Sequence[Predictions], fitted: dict[str, Convention], default: str) -> dict[str, Any]:
    """Per val set: mean NME (%, box and inter-ocular) with no convention, its own, and the default."""
    table: dict[str, Any] = {}
    for pred, gt, names, set_name in val:
        own = max(set(names), key=names.count)
        row: dict[str, Any] = {"faces": len(gt), "convention": own}
        for label, convention in (("none", None), ("own", fitted.get(own)), ("default", fitted[default])):
            points = apply(convention, pred)
            row[label] = {n: 100 * float(nme(points, gt, NORMALISERS[n](gt)).mean()) for n in ("box", "inter_ocular")}
        table[set_name] = row
    return table


def get_args_parser() -> argparse.ArgumentParser:
    parser = checkpoint_to_checkpoint(__doc__, "conventions")
    parser.add_argument("--train", nargs="+", default=list(TRAIN_SETS), metavar=SPEC)
    parser.add_argument("--val", nargs="+", default=list(VAL_SETS), metavar=SPEC)
    parser.add_argument("--default", default="300w", help="the convention the checkpoint serves unless told")
    return parser


def own_nme(convention: Convention | None, val: Sequence[Predictions], name: str) -> float:
    """Mean box NME (%) of the val faces of convention ``name`` in ``convention``."""
    errors = [nme(apply(convention, p), g, NORMALISERS["box"](g))[np.asarray(n) == name] for p, g, n, _ in val]
    return 100 * float(np.concatenate(errors).mean())


def choose(name: str, pred: Array, gt: Array, val: Sequence[Predictions]) -> tuple[Convention, dict[str, Any]]:
    """The convention ``name`` as offsets alone or with the shape-dependent part at the ridge strength that serves
    its val faces best (box NME); each candidate's val NME is returned for the record."""
    offsets = estimate(pred, gt, [name] * len(pred))[name]
    candidates = {"offsets": as_convention(name, offsets)}
    for ridge in RIDGE:
        intercept, mean, matrix = fit_linear(pred, gt, ridge)
        candidates[f"linear, ridge {ridge:g}"] = as_convention(name, intercept, (mean, matrix))
    scores = {label: own_nme(c, val, name) for label, c in candidates.items()}
    best = min(scores, key=lambda label: scores[label])
    return candidates[best], {"chosen": best, "val_box_nme": scores}


def gate_default(
    fitted: dict[str, Convention], default: str, pred: Array, faces: dict[str, int]
) -> dict[str, Any] | None:
    """Where the default convention's shape regression stops: the RMS shape distance (box sides) from its mean
    that :data:`GATE_PERCENTILE` % of its own training faces lie within; beyond it, the convention with the most
    other training faces takes over. ``None`` when the default has no regression or there is no other."""
    convention, others = fitted[default], [k for k in fitted if k != default]
    if convention.mean is None or not others:
        return None
    x, _ = shapes(pred)
    distance = np.sqrt(((x - np.asarray(convention.mean)) ** 2).mean(axis=1))
    radius = float(np.percentile(distance, GATE_PERCENTILE))
    return {"fallback": max(others, key=lambda k: faces[k]), "radius": radius, "percentile": GATE_PERCENTILE}


def main(args: argparse.Namespace) -> dict[str, Any]:
    options = EngineOptions(device="cpu", precision="fp32", cuda_graphs=False, convention="none")
    engine = load_for_inference(args.checkpoint, options)  # the network's own points
    parts = [predict(engine, spec, "train") for spec in args.train]
    val = [predict(engine, spec, "val") for spec in args.val]
    pred, gt = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    names = np.asarray([name for p in parts for name in p[2]])
    faces = {str(k): int((names == k).sum()) for k in sorted(set(names)) if (names == k).sum() >= MIN_FACES}
    if args.default not in faces:
        raise ValueError(f"--default {args.default!r} has fewer than {MIN_FACES} training faces (have: {faces})")
    fitted, choices = {}, {}
    for name in faces:
        fitted[name], choices[name] = choose(name, pred[names == name], gt[names == name], val)
    gate = gate_default(fitted, args.default, pred[names == args.default], faces)
    if gate:
        fallback = fitted[gate["fallback"]]
        fitted[args.default] = replace(fitted[args.default], radius=gate["radius"], fallback=fallback)
    summary: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "unit": UNIT,
        "default": args.default,
        "train": list(args.train),
        "faces": faces,
        "choices": choices,
        "gate": gate,
        "val": val_table(val, fitted, args.default),
    }
    net, config, metadata = load_checkpoint(args.checkpoint)
    conventions: dict[str, Any] = {"default": args.default, "unit": UNIT, "train": list(args.train), "faces": faces}
    conventions["offsets"] = {k: np.round(np.asarray(c.offsets), 6).tolist() for k, c in fitted.items()}
    conventions["linear"] = {
        k: {"mean": list(c.mean), "matrix": [list(row) for row in c.matrix]}
        for k, c in fitted.items()
        if c.mean is not None and c.matrix is not None
    }
    conventions["gate"] = {args.default: gate} if gate else {}
    # the conventions are fitted on this decoder's points: the checkpoint is served with the same one
    fits = {"conventions": conventions, "decode_blur_sigma": engine.decode_blur}
    save_checkpoint(args.out, net, config, {**metadata, **fits})
    log.info("wrote %s", args.out)
    report_dir = args.report_dir or args.out.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "conventions.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, choice in choices.items():
        log.info("%s: %s (val box NME %s)", name, choice["chosen"], choice["val_box_nme"])
    for set_name, row in summary["val"].items():
        log.info(
            "%s (%s): box NME %.3f none, %.3f own, %.3f default",
            set_name, row["convention"], row["none"]["box"], row["own"]["box"], row["default"]["box"],
        )  # fmt: skip
    return summary


def cli() -> None:
    run_cli(main, get_args_parser())


if __name__ == "__main__":
    cli()

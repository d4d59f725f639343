"""Build the 3D head model that head pose is fitted with: ``python -m training.fit_head``.

From the AFLW2000-3D **train** split only (val chooses, test is never read):

* **mean**: the 3D points whose projections under each face's ground-truth pose (``Pose_Para``) best match the
  faces' 2D landmark annotations, by alternating least squares over the faces' scales and the points. It is the 3D
  face of the *annotation convention* the network predicts (its jaw points follow the visible contour, as the 2D
  labels do), not of the scanned mesh.
* **modes**: the leading principal components of the faces' 3D points (``pt3d_68``), each brought into the head
  frame with its own pose, scaled to the mean, one standard deviation each.
* **weights**: how well a fixed 3D point explains each landmark's annotation under the true pose: the inverse of
  its mean squared residual, scaled so the best point weighs 1 (the jaw, whose labels slide along the silhouette
  as the head turns, weighs least).

* **correction**: a ridge regression of the geometric fit's angle error on the network's predicted points of the
  train faces (:class:`model.pose.Correction`); its ridge weight, or none, is chosen on the val split.

Writes ``model/weights/head_model.npz`` (a few KB) and ``head_model.json`` (the val table the choice was made on,
and how well each candidate pose confidence ranks the chosen model's val errors, ``confidence_rank_val``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.io

from model.landmarks import NUM_LANDMARKS
from model.pose import (
    DEFAULT_HEAD_MODEL,
    Correction,
    HeadModel,
    PoseOptions,
    correction_features,
    estimate_pose,
    rotation,
)
from training.cli import run_cli
from training.datasets import DataError, Sample, read_aflw2000
from training.metrics import angle_errors, hopenet_keeps, spearman, wrap_degrees

log = logging.getLogger("training.fit_head")

Array = np.ndarray


def pose_rotation(sample: Sample) -> Array:
    if sample.pose is None:
        raise DataError(f"{sample.name}: no ground-truth pose")
    yaw, pitch, roll = (math.radians(a) for a in sample.pose)
    return rotation(pitch, yaw, roll)


def canonical_3d(samples: list[Sample]) -> Array:
    """Each face's ``pt3d_68`` in the head frame (its own pose undone), centred, ``(N, 68, 3)`` at unit RMS."""
    shapes = []
    for s in samples:
        mat = scipy.io.loadmat(str(s.image.with_suffix(".mat")))
        points = np.asarray(mat["pt3d_68"], dtype=np.float64).T * np.array([1.0, -1.0, 1.0])  # y up
        head = (points - points.mean(axis=0)) @ pose_rotation(s)  # R.T applied to each point
        shapes.append(head / np.sqrt((head**2).sum(1).mean()))
    return np.stack(shapes)


def fit_mean(samples: list[Sample], start: Array, iterations: int = 10) -> tuple[Array, Array]:
    """The 3D points that best project to the 2D labels under the true poses, and each point's mean squared
    residual in units of the face's scale (the alternating least squares of the module docstring)."""
    rotations = np.stack([pose_rotation(s)[:2] for s in samples])  # (N, 2, 3)
    labels = np.stack([s.points for s in samples]) * np.array([1.0, -1.0])  # y up
    labels = labels - labels.mean(axis=1, keepdims=True)
    head = start - start.mean(axis=0)
    scales = np.ones(len(samples))
    for _ in range(iterations):
        projected = np.einsum("nij,kj->nki", rotations, head)  # (N, K, 2)
        scales = (projected * labels).sum((1, 2)) / (projected**2).sum((1, 2))
        a = scales[:, None, None] * rotations  # (N, 2, 3)
        lhs = np.einsum("nij,nik->jk", a, a)
        rhs = np.einsum("nij,nki->kj", a, labels)  # (K, 3)
        head = np.linalg.solve(lhs, rhs.T).T
        head = head - head.mean(axis=0)
        head = head / np.sqrt((head**2).sum(1).mean())
    projected = scales[:, None, None] * np.einsum("nij,kj->nki", rotations, head)
    residual = ((projected - labels) ** 2).sum(-1) / scales[:, None] ** 2  # (N, K) in head units
    return head, residual.mean(axis=0)


def build(samples: list[Sample], modes: int = 10) -> HeadModel:
    shapes = canonical_3d(samples)
    mean, residual = fit_mean(samples, shapes.mean(axis=0))
    centred = (shapes - shapes.mean(axis=0)).reshape(len(shapes), -1)
    _, sigma, vt = np.linalg.svd(centred, full_matrices=False)
    std = sigma / math.sqrt(len(shapes) - 1)
    basis = (vt[:modes] * std[:modes, None]).reshape(modes, NUM_LANDMARKS, 3)
    weights = residual.min() / residual
    return HeadModel(mean, basis, weights)


def pose_errors(
    samples: list[Sample],
    head: HeadModel,
    options: PoseOptions,
    points: Array | None = None,
    confidence: Array | None = None,
) -> Array:
    """``(N, 3)`` absolute yaw, pitch, roll errors in degrees (NaN where no pose was returned); ``points`` default
    to the labels (confidences then all 1)."""
    out = np.full((len(samples), 3), np.nan)
    for i, s in enumerate(samples):
        conf = None if confidence is None else confidence[i]
        fit = estimate_pose(s.points if points is None else points[i], conf, head, options)
        if fit.pose is not None and s.pose is not None:
            out[i] = angle_errors(np.array([fit.pose.yaw, fit.pose.pitch, fit.pose.roll]), np.array(s.pose))
    return out


def fit_correction(
    samples: list[Sample], points: Array, confidence: Array, head: HeadModel, options: PoseOptions, ridge: float
) -> Correction:
    """Ridge regression from :func:`model.pose.correction_features` of the geometric fit to its angle error, on
    training faces' *predicted* points (HopeNet-protocol faces the fit does not refuse)."""
    geometric = replace(head, correction=None)
    features, residuals = [], []
    for s, p, c in zip(samples, points, confidence, strict=True):
        fit = estimate_pose(p, c, geometric, options)
        if fit.pose is None or s.pose is None or not hopenet_keeps(s.pose):
            continue
        assert fit.rotation is not None
        assert fit.translation is not None
        features.append(correction_features(p, fit.rotation, fit.scale, fit.translation))
        got = np.array([fit.pose.yaw, fit.pose.pitch, fit.pose.roll])
        residuals.append(wrap_degrees(np.array(s.pose) - got))
    x, y = np.stack(features), np.stack(residuals)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    bias = y.mean(axis=0)
    weights = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (y - bias))
    return Correction(mean, scale, weights, bias)


def confidence_ranking(
    samples: list[Sample], head: HeadModel, options: PoseOptions, points: Array, confidence: Array
) -> dict[str, float | int]:
    """Spearman rank correlation of each candidate pose confidence with the mean angle error (HopeNet-protocol
    faces with a pose; negative: the confidence falls as the error grows): the served one (the mean confidence of
    the points) and the fit's residual (the rule served before 2026-12-07; its exponential is monotone, so ranking
    by the residual is ranking by it)."""
    served, residual, errors = [], [], []
    for s, p, c in zip(samples, points, confidence, strict=True):
        fit = estimate_pose(p, c, head, options)
        if fit.pose is None or fit.residual is None or s.pose is None or not hopenet_keeps(s.pose):
            continue
        served.append(fit.pose.confidence)
        residual.append(-fit.residual)
        got = np.array([fit.pose.yaw, fit.pose.pitch, fit.pose.roll])
        errors.append(float(angle_errors(got, np.array(s.pose)).mean()))
    return {
        "faces": len(errors),
        "mean point confidence (served)": round(spearman(np.array(served), np.array(errors)), 3),
        "fit residual (served before 2026-12-07)": round(spearman(np.array(residual), np.array(errors)), 3),
    }


def predict(checkpoint: Path, *splits: list[Sample]) -> list[tuple[Array, Array]]:
    """The network's points and confidences for each list of samples with ground-truth boxes, as evaluation runs
    it (the checkpoint loaded once)."""
    from model.engine import EngineOptions
    from model.inference import load_for_inference
    from training.evaluate import run

    engine = load_for_inference(checkpoint, EngineOptions(device="auto", precision="fp32", cuda_graphs=False))
    return [(ev.points, ev.confidence) for ev in (run(engine, samples, "gt") for samples in splits)]


def hopenet_mask(samples: list[Sample]) -> Array:
    """Faces the HopeNet protocol keeps (:func:`training.metrics.hopenet_keeps`)."""
    return np.array([hopenet_keeps(s.pose) for s in samples])


RIDGES = (1.0, 10.0, 100.0, 1000.0)  # the correction's ridge weights tried; val chooses (or no correction)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/aflw2000-3d"))
    p.add_argument("--checkpoint", type=Path, default=Path("model/weights/dsc_landmarks_cpu.pt"),
                   help="the network whose predicted points the correction is learned on")  # fmt: skip
    p.add_argument("--modes", type=int, default=10)
    p.add_argument("--out", type=Path, default=DEFAULT_HEAD_MODEL)
    return p


def summary(errors: Array) -> dict[str, float]:
    mae = np.nanmean(errors, axis=0)
    return {"mean": round(float(mae.mean()), 3), "yaw": round(float(mae[0]), 3), "pitch": round(float(mae[1]), 3),
            "roll": round(float(mae[2]), 3), "refused": int(np.isnan(errors[:, 0]).sum())}  # fmt: skip


def main(args: argparse.Namespace) -> HeadModel:
    train = read_aflw2000(args.data, "train")
    val = read_aflw2000(args.data, "val")
    geometric = build(train, args.modes)
    options = PoseOptions()
    keep = hopenet_mask(val)
    (train_points, train_conf), (val_points, val_conf) = predict(args.checkpoint, train, val)
    table = {"labels, geometric fit": summary(pose_errors(val, geometric, options)[keep])}
    table["predicted, geometric fit"] = summary(pose_errors(val, geometric, options, val_points, val_conf)[keep])
    with_modes = PoseOptions(shape_modes=args.modes, iterations=6)  # the alternative the default was chosen over
    table[f"predicted, geometric fit with {args.modes} shape modes"] = summary(
        pose_errors(val, geometric, with_modes, val_points, val_conf)[keep]
    )
    chosen, best, chosen_name = geometric, table["predicted, geometric fit"]["mean"], "predicted, geometric fit"
    for ridge in RIDGES:
        candidate = replace(geometric, correction=fit_correction(train, train_points, train_conf, geometric,
                                                                 options, ridge))  # fmt: skip
        row = summary(pose_errors(val, candidate, options, val_points, val_conf)[keep])
        name = f"predicted, corrected (ridge {ridge:g})"
        table[name] = row
        if row["mean"] < best:
            chosen, best, chosen_name = candidate, row["mean"], name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chosen.save(args.out)
    record = {"checkpoint": str(args.checkpoint), "train_faces": len(train), "val_faces": int(keep.sum()),
              "protocol": "HopeNet: faces with an angle beyond 99 degrees left out", "val_mae_deg": table,
              "chosen": chosen_name,
              "confidence_rank_val": confidence_ranking(val, chosen, options, val_points, val_conf)}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    for name, row in table.items():
        log.info("val %-36s MAE %.2f (yaw %.2f, pitch %.2f, roll %.2f), %d refused", name, row["mean"], row["yaw"],
                 row["pitch"], row["roll"], row["refused"])  # fmt: skip
    log.info("chose %s; wrote %s; pose confidence rank on val: %s", record["chosen"], args.out,
             record["confidence_rank_val"])  # fmt: skip
    return chosen


def cli() -> None:
    run_cli(main, get_args_parser())


if __name__ == "__main__":
    cli()

"""Calibrate per-point confidence on validation splits and store the map in the checkpoint.

    python -m training.calibrate --checkpoint runs/multi_cpu/best.pt --out model/weights/dsc_landmarks_cpu.pt

Calibrated confidence = the estimated probability that a point lies within ``--tolerance`` (default 5 %) of the
face size (sqrt(w h) of the landmark box) from the truth, fitted by isotonic regression of that event on the raw
score of ``model.codec.confidence`` (a monotone map, so the ranking of points is unchanged). The map is stored as
at most 32 knots in the checkpoint metadata, with the score's name, and applied by ``model.codec.confidence``.

The shipped map is fitted on every face of every ``--sets`` entry (AFLW2000-3D val and the 300-W subset's val by
default). Its calibration error is reported honestly by **cross-fitting**: the faces are split into ``--folds``
groups (all points of a face in one group, since a face's errors move together), each group's confidences come
from a map fitted on the other groups, and the expected calibration error of those out-of-fold confidences is
reported per set beside the raw score's. Writes ``calibration.json`` and a reliability plot.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import isotonic_regression

from model.checkpoint import load_checkpoint, save_checkpoint
from model.codec import CONFIDENCE_SCORE, Calibration
from model.engine import EngineOptions
from model.inference import InferenceModel, load_for_inference
from training.cli import SPEC, checkpoint_to_checkpoint, run_cli
from training.config import REPORT_ONLY_SPLITS
from training.datasets import samples_from_spec
from training.evaluate import run
from training.metrics import box_size, point_errors, spearman

log = logging.getLogger("training.calibrate")


def fit(raw: np.ndarray, hit: np.ndarray, knots: int = 32) -> Calibration:
    """Isotonic fit of ``hit`` (0/1) on ``raw``, reduced to ``knots`` points at quantiles of ``raw``."""
    order = np.argsort(raw, kind="stable")
    x, y = raw[order], isotonic_regression(hit[order].astype(np.float64), increasing=True).x
    picks = np.unique(np.quantile(np.arange(len(x)), np.linspace(0, 1, knots)).round().astype(int))
    xs, ys = x[picks], np.clip(y[picks], 0.0, 1.0)
    keep = np.concatenate([[True], np.diff(xs) > 1e-6])
    xs, ys = xs[keep], np.maximum.accumulate(ys[keep])
    if len(xs) < 2:
        raise ValueError("not enough distinct confidence values to calibrate")
    return Calibration(tuple(float(v) for v in xs), tuple(float(v) for v in ys))


def reliability(conf: np.ndarray, hit: np.ndarray, bins: int = 10) -> tuple[list[dict[str, float]], float]:
    """Per-bin mean confidence vs observed hit rate, and the expected calibration error."""
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf >= lo) & ((conf < hi) if hi < 1 else (conf <= hi))
        if mask.any():
            rows.append(
                {
                    "lo": float(lo),
                    "hi": float(hi),
                    "count": int(mask.sum()),
                    "confidence": float(conf[mask].mean()),
                    "hit_rate": float(hit[mask].mean()),
                }
            )
            ece += mask.mean() * abs(conf[mask].mean() - hit[mask].mean())
    return rows, float(ece)


def plot(path: Path, before: list[dict[str, float]], after: list[dict[str, float]], tolerance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect")
    for rows, label in ((before, "raw score"), (after, "calibrated (cross-fitted)")):
        ax.plot([r["confidence"] for r in rows], [r["hit_rate"] for r in rows], marker="o", label=label)
    ax.set(
        xlabel="confidence",
        ylabel=f"share of points within {100 * tolerance:.0f} % of face size",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Confidence reliability (val sets, out-of-fold)",
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


DEFAULT_SETS = (
    "aflw2000:../shared/data/aflw2000-3d:val:pts",
    "pts_folder:../shared/data/300w-subset:val",
)


@dataclass
class SetScores:
    """Raw confidence scores and hits (point within tolerance) of one validation set, ``(faces, 68)`` each."""

    name: str
    raw: np.ndarray
    hit: np.ndarray
    errors: np.ndarray


def score_set(engine: InferenceModel, spec: str, tolerance: float) -> SetScores:
    split = spec.split(":")[2] if spec.count(":") >= 2 else ""
    if split in REPORT_ONLY_SPLITS:
        raise ValueError(f"{spec}: a calibration is fitted on val, never on a test split ({split!r})")
    samples = samples_from_spec(spec)
    ev = run(engine, samples, "gt")
    gt = np.stack([s.points for s in ev.samples])
    errors = point_errors(ev.points, gt) / box_size(gt)[:, None]
    _, root, split, *_ = spec.split(":")
    return SetScores(f"{Path(root).name}/{split}", ev.confidence, (errors <= tolerance).astype(np.float64), errors)


def cross_fit(raw: np.ndarray, hit: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Out-of-fold calibrated confidence ``(faces, 68)``: each face's from a map fitted on the other folds."""
    group = np.random.default_rng(seed).permutation(len(raw)) % folds
    out = np.empty_like(raw)
    for k in range(folds):
        held = group == k
        calibration = fit(raw[~held].ravel(), hit[~held].ravel())
        out[held] = calibration(torch.from_numpy(raw[held])).numpy()
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = checkpoint_to_checkpoint(__doc__, "calibration")
    parser.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), metavar=SPEC)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    engine = load_for_inference(args.checkpoint, EngineOptions(device="cpu", precision="fp32"))
    engine.calibration = None  # fit on the raw score
    sets = [score_set(engine, spec, args.tolerance) for spec in args.sets]
    raw = np.concatenate([s.raw for s in sets])
    hit = np.concatenate([s.hit for s in sets])
    calibration = fit(raw.ravel(), hit.ravel())
    held_out = cross_fit(raw, hit, args.folds)
    per_set: dict[str, dict[str, Any]] = {}
    start = 0
    for s in sets:
        oof = held_out[start : start + len(s.raw)]
        start += len(s.raw)
        per_set[s.name] = {
            "faces": len(s.raw),
            "spearman_raw": spearman(s.raw, s.errors),
            "spearman_cross_fitted": spearman(oof, s.errors),
            "ece_raw": reliability(s.raw.ravel(), s.hit.ravel())[1],
            "ece_cross_fitted": reliability(oof.ravel(), s.hit.ravel())[1],
            "hit_rate": float(s.hit.mean()),
        }
    before, ece_before = reliability(raw.ravel(), hit.ravel())
    after, ece_after = reliability(held_out.ravel(), hit.ravel())
    summary = {
        "tolerance": args.tolerance,
        "points": int(raw.size),
        "sets": args.sets,
        "folds": args.folds,
        "per_set": per_set,
        "ece_raw": ece_before,
        "ece_cross_fitted": ece_after,
        "reliability_raw": before,
        "reliability_cross_fitted": after,
        "knots": {"xs": list(calibration.xs), "ys": list(calibration.ys), "score": CONFIDENCE_SCORE},
    }
    net, config, metadata = load_checkpoint(args.checkpoint)
    metadata = {
        **metadata,
        "calibration": summary["knots"],
        "confidence": {k: summary[k] for k in ("tolerance", "sets", "folds", "per_set", "ece_raw", "ece_cross_fitted")},
    }
    save_checkpoint(args.out, net, config, metadata)
    log.info("wrote %s", args.out)
    report_dir = args.report_dir or args.out.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "calibration.json").write_text(json.dumps(summary, indent=2))
    plot(report_dir / "calibration.png", before, after, args.tolerance)
    for name, b in per_set.items():
        ece = f"ECE raw {b['ece_raw']:.3f} -> cross-fitted {b['ece_cross_fitted']:.3f}"
        log.info("%s: Spearman(conf, error) %.3f; %s", name, b["spearman_raw"], ece)
    return summary


def cli() -> None:
    run_cli(main, get_args_parser())


if __name__ == "__main__":
    cli()

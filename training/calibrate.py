"""Calibrate per-point confidence on a validation split and store the map in the checkpoint.

    python -m training.calibrate --checkpoint runs/aflw2000_cpu/best.pt --out model/weights/dsc_landmarks_cpu.pt

Calibrated confidence = the estimated probability that a point lies within ``--tolerance`` (default 5 %) of the
face size (sqrt(w h) of the landmark box) from the truth, fitted by isotonic regression of that event on the raw
score of ``model.codec.confidence`` (a monotone map, so the ranking of points is unchanged). The map is stored as
at most 32 knots in the checkpoint metadata, with the score's name, and applied by ``model.codec.confidence``.
Writes ``calibration.json`` and a reliability plot.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import isotonic_regression

from model.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from model.codec import CONFIDENCE_SCORE, Calibration
from training.datasets import load_samples
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
    for rows, label in ((before, "raw score"), (after, "calibrated")):
        ax.plot([r["confidence"] for r in rows], [r["hit_rate"] for r in rows], marker="o", label=label)
    ax.set(
        xlabel="confidence",
        ylabel=f"share of points within {100 * tolerance:.0f} % of face size",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Confidence reliability (val)",
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (weights + calibration)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/aflw2000-3d"))
    parser.add_argument("--format", default="aflw2000")
    parser.add_argument("--split", default="val")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--report-dir", type=Path, default=None, help="default: beside --out")
    args = parser.parse_args()
    engine = load_for_inference(args.checkpoint, "cpu")
    engine.calibration = None  # fit on the raw score
    samples = load_samples(args.format, args.data, args.split)
    ev = run(engine, samples, "gt", batch_size=32, workers=0)
    gt = np.stack([s.points for s in ev.samples])
    errors = point_errors(ev.points, gt) / box_size(gt)[:, None]
    hit = (errors <= args.tolerance).astype(np.float64)
    raw = ev.confidence.ravel()
    calibration = fit(raw, hit.ravel())
    calibrated = calibration(torch.from_numpy(raw)).numpy()
    before, ece_before = reliability(raw, hit.ravel())
    after, ece_after = reliability(calibrated, hit.ravel())
    summary = {
        "tolerance": args.tolerance,
        "points": int(raw.size),
        "split": args.split,
        "spearman_raw": spearman(raw, errors.ravel()),
        "spearman_calibrated": spearman(calibrated, errors.ravel()),
        "ece_raw": ece_before,
        "ece_calibrated": ece_after,
        "reliability_raw": before,
        "reliability_calibrated": after,
        "knots": {"xs": list(calibration.xs), "ys": list(calibration.ys), "score": CONFIDENCE_SCORE},
    }
    net, config, metadata = load_checkpoint(args.checkpoint)
    metadata = {
        **metadata,
        "calibration": summary["knots"],
        "confidence": {
            k: summary[k]
            for k in ("tolerance", "split", "spearman_raw", "spearman_calibrated", "ece_raw", "ece_calibrated")
        },
    }
    save_checkpoint(args.out, net, config, metadata)
    report_dir = args.report_dir or args.out.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "calibration.json").write_text(json.dumps(summary, indent=2))
    plot(report_dir / "calibration.png", before, after, args.tolerance)
    log.info(
        "Spearman(conf, error) raw %.3f calibrated %.3f; ECE %.3f -> %.3f; wrote %s",
        summary["spearman_raw"],
        summary["spearman_calibrated"],
        ece_before,
        ece_after,
        args.out,
    )
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()

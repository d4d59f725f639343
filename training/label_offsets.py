"""Label offsets by annotation source, and the flip that keeps them: ``python -m training.label_offsets``.

Each source's annotators put a point a little off the feature a mirror-symmetric model finds (300-W's LFPW labels
sit about 0.8 photo pixels right of it, AFLW2000-3D's re-annotation the other way). Horizontal flip augmentation
mirrors that offset too, so a model trained with it learns the average of the offset and its mirror image and
misses both. Only the *antisymmetric* part of an offset is lost this way (a symmetric part survives a flip), and it
is what a flip-trained model leaves in its mean residual (label - prediction) on its own training faces.

:func:`estimate` measures those residuals per source and per point, antisymmetrised
(``a_k = (r_k - mirror(r)_k) / 2``), in units of the longer side of the face's tight landmark box (the side the
crop is built from). Training with ``flip_offsets: <that file>`` then makes a flipped face's label the mirror of
(label - a) plus a, so every target follows its source's convention whichever way the face looks
(:func:`flip_correction`). :func:`offset_table` is the mean offset report of :mod:`training.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from model.landmarks import MIRROR, NUM_LANDMARKS
from training.cli import run_cli
from training.metrics import NORMALISERS

log = logging.getLogger("training.label_offsets")

Array = NDArray[np.float64]
UNIT = "longer side of the tight landmark box"
T = TypeVar("T", bound=Any)  # a numpy array or a torch tensor: flip_correction is plain arithmetic


def box_side(points: Array) -> Array:
    """Longer side of each face's tight landmark box, ``(N,)`` for ``(N, K, 2)`` points."""
    wh = points.max(axis=1) - points.min(axis=1)
    return np.asarray(np.maximum(wh.max(axis=1), 1.0), dtype=np.float64)


def mirror_offsets(offsets: Array) -> Array:
    """The offsets a mirrored face would show: point k takes its mirror partner's offset, x negated."""
    mirrored = np.asarray(offsets, dtype=np.float64)[..., list(MIRROR), :].copy()
    mirrored[..., 0] *= -1
    return mirrored


def antisymmetric(offsets: Array) -> Array:
    """The part of ``(..., K, 2)`` per-point offsets that a horizontal flip reverses (what flipping loses)."""
    return (np.asarray(offsets, dtype=np.float64) - mirror_offsets(offsets)) / 2


def estimate(pred: Array, gt: Array, sources: Sequence[str], min_faces: int = 20) -> dict[str, Array]:
    """Per source, the antisymmetric part of the mean residual (label - prediction), ``(K, 2)`` in box sides.

    ``pred`` should come from a flip-trained model on the training faces, so that what it leaves is the part of
    each source's convention that the flip averaged away. Sources with fewer than ``min_faces`` faces are left out.
    """
    residual = (np.asarray(gt) - np.asarray(pred)) / box_side(np.asarray(gt))[:, None, None]
    return {k: antisymmetric(v) for k, v in group_means(residual, sources, min_faces, "source").items()}


def group_means(residual: Array, groups: Sequence[str], min_faces: int, what: str) -> dict[str, Array]:
    """Mean of ``(N, K, 2)`` residuals per group name (``groups``, one per face); a group with fewer than
    ``min_faces`` faces is left out, with a warning naming it as a ``what``."""
    names = np.asarray(groups)
    out: dict[str, Array] = {}
    for group in sorted(set(groups)):
        mask = names == group
        if mask.sum() < min_faces:
            log.warning("%s %s: %d faces, fewer than %d: not estimated", what, group, mask.sum(), min_faces)
            continue
        out[group] = residual[mask].mean(axis=0)
    return out


def save(path: Path, offsets: dict[str, Array], provenance: dict[str, Any]) -> None:
    body = {"unit": UNIT, **provenance, "sources": {k: np.round(v, 6).tolist() for k, v in offsets.items()}}
    path.write_text(json.dumps(body, indent=1) + "\n")


def load(path: Path) -> dict[str, Array]:
    """Offsets written by :func:`save`; a malformed file raises ``ValueError`` naming it."""
    try:
        body = json.loads(path.read_text())
        offsets = {k: np.asarray(v, dtype=np.float64) for k, v in body["sources"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"flip_offsets {path}: not a label offset file ({exc})") from exc
    for source, value in offsets.items():
        if value.shape != (NUM_LANDMARKS, 2) or not np.isfinite(value).all():
            raise ValueError(f"flip_offsets {path}: source {source!r} is not {NUM_LANDMARKS} finite (dx, dy) pairs")
    return offsets


def per_sample(offsets: dict[str, Array], sources: Sequence[str], points: Array) -> Array:
    """``(N, K, 2)`` offsets in image pixels for training faces: each face's source offset times its box side.

    A source the file does not know gets none (zeros), said once in the log."""
    unknown = sorted(set(sources) - set(offsets))
    if unknown:
        log.warning("flip_offsets: no offset for sources %s; their flips stay plain mirrors", unknown)
    zero = np.zeros((NUM_LANDMARKS, 2))
    table = np.stack([offsets.get(s, zero) for s in sources])
    return table * box_side(np.asarray(points))[:, None, None]


def flip_correction(offsets: T, linear: T, unflipped: T) -> T:
    """What to add to the mirror-permuted crop points of a flipped face so its target keeps the source convention.

    ``offsets`` ``(..., K, 2)`` in image pixels, ``linear`` ``(..., 2, 2)`` the image -> crop map with the flip,
    ``unflipped`` the same map without it. The flipped target of point k is ``A(p_m(k)) - L d_m(k) + L0 d_k``:
    the mirror partner's label, less its offset as the flip carries it, plus this point's offset as the crop
    shows the face. Works for numpy arrays and torch tensors alike.
    """
    permuted = offsets[..., list(MIRROR), :]
    return -(permuted @ linear.swapaxes(-1, -2)) + offsets @ unflipped.swapaxes(-1, -2)


def offset_table(pred: Array, gt: Array, sources: Sequence[str], norm: str) -> dict[str, dict[str, Any]]:
    """Mean offset (prediction - label) per source: x and y in % of ``norm`` and in image pixels, and per point
    in % of ``norm``. A systematic x offset is the signature of a flip that averaged two conventions."""
    delta = np.asarray(pred) - np.asarray(gt)
    scale = NORMALISERS[norm](np.asarray(gt))
    names = np.asarray(sources)
    out: dict[str, dict[str, Any]] = {}
    for source in sorted(set(sources)):
        mask = names == source
        relative = delta[mask] / scale[mask, None, None]
        mean = relative.mean(axis=(0, 1))
        pixels = delta[mask].mean(axis=(0, 1))
        out[source or "all"] = {
            "faces": int(mask.sum()),
            "x_pct": 100 * float(mean[0]),
            "y_pct": 100 * float(mean[1]),
            "x_px": float(pixels[0]),
            "y_px": float(pixels[1]),
            "per_point_pct": np.round(100 * relative.mean(axis=0), 3).tolist(),
        }
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a flip-trained checkpoint")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FORMAT:ROOT:SPLIT[:LABELS]",
        help="training faces (repeatable); never a val or test split",
    )
    p.add_argument("--out", type=Path, required=True, help="JSON file for a training config's flip_offsets")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def main(args: argparse.Namespace) -> dict[str, Array]:
    from model.engine import EngineOptions
    from model.inference import load_for_inference
    from training.config import REPORT_ONLY_SPLITS
    from training.datasets import samples_from_spec
    from training.evaluate import run

    samples = []
    for spec in args.data:
        if spec.split(":")[2:3] and (spec.split(":")[2] in REPORT_ONLY_SPLITS or spec.split(":")[2] == "val"):
            raise ValueError(f"--data {spec}: label offsets are estimated on training faces only")
        samples += samples_from_spec(spec)
    engine = load_for_inference(args.checkpoint, EngineOptions(device="auto", precision="fp32", cuda_graphs=False))
    ev = run(engine, samples, "gt", batch_size=args.batch_size)
    gt = np.stack([s.points for s in ev.samples])
    sources = [s.source for s in ev.samples]
    offsets = estimate(ev.points, gt, sources)
    provenance = {"checkpoint": str(args.checkpoint), "model": engine.metadata.get("version"), "data": args.data}
    provenance["faces"] = {k: int(sum(s == k for s in sources)) for k in offsets}
    save(args.out, offsets, provenance)
    log.info("wrote %s", args.out)
    for source, value in offsets.items():
        log.info(
            "%s: mean |antisymmetric offset| %.3f %% of the box side (x mean over points %.3f %%)",
            source,
            100 * float(np.linalg.norm(value, axis=1).mean()),
            100 * float(np.abs(value[:, 0]).mean()),
        )
    return offsets


def cli() -> None:
    run_cli(main, get_args_parser())


if __name__ == "__main__":
    cli()

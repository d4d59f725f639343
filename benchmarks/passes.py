"""How a detected face's network passes combine, chosen on val: ``python -m benchmarks.passes [--out FILE]``.

Each val and test face of both datasets, found by the service's YuNet detector (as ``POST /landmarks`` finds it,
fp32), run through the service's pipeline with 1, 2 and 3 passes: the first on the detector's box, each later one
re-framed from the previous pass's landmarks (the tight box). Ways to combine them are compared: the last pass
alone, the mean of the re-framed passes, the mean of all passes (:func:`model.pipeline.mean_landmarks`).
AFLW2000-3D is scored in the
served (300-W) annotation convention and in its own (``aflw2000``), 300-W in the served one. The same faces with
ground-truth boxes are the reference.

Chosen on val only. Each variant's gain over the served default (two passes, the second's points) on the two
sets (AFLW2000-3D in the served convention, 300-W) is given with its paired standard error over the faces. With
three passes: the variant whose *smaller* gain is largest (the rule :mod:`benchmarks.decode_blur` uses). With
two: the default changes only if the mean of the two gains more than two standard errors on both sets. How
many passes to run is a trade of time for accuracy left to the caller (``LANDMARKS_PASSES``, default 2): each
pass is one more network run per detected face, and the time of a whole photo (YuNet, the passes, pose) is
measured too: the service's :class:`model.Landmarker` on the first ``--timed`` 300-W val photos, the pass counts
in alternating rounds so that drift of a shared machine falls on each. The test rows are reported, never used
to choose.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, publish, table
from model.artifacts import SHIPPED_CHECKPOINT
from model.engine import EngineOptions
from model.inference import load_for_inference
from model.landmarker import Landmarker
from model.pipeline import PipelineOptions
from training.datasets import load_image, load_samples
from training.evaluate import find_faces, run
from training.metrics import NORMALISERS, nme

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = [  # (name, format, root, labels, norm, convention)
    ("AFLW2000-3D", "aflw2000", SHARED / "aflw2000-3d", "pts", "box", "default"),
    ("300-W", "pts_folder", SHARED / "300w-subset", None, "inter_ocular", "default"),
    ("AFLW2000-3D own convention", "aflw2000", SHARED / "aflw2000-3d", "pts", "box", "aflw2000"),
]
CHOOSE_ON = ("AFLW2000-3D", "300-W")
SERVED = "2nd pass alone (2 passes, served)"
AT_TWO = (SERVED, "mean of passes 1, 2")
AT_THREE = ("3rd pass alone", "mean of passes 2, 3", "mean of passes 1-3 (3 passes, served)")
VARIANTS = ("1 pass", *AT_TWO, *AT_THREE)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    p.add_argument("--timed", type=int, default=40, help="300-W val photos timed per pass count and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    return p


def variants(points: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Every variant's points from the pipeline's answers with 1, 2 and 3 passes (three answer the mean of the
    three, so the third alone is recovered from it and the first two)."""
    first, second = points[1], points[2]
    third = 3 * points[3] - first - second
    each = (first, second, (first + second) / 2, third, (second + third) / 2, points[3])
    return dict(zip(VARIANTS, each, strict=True))


def paired_gain(base: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean of ``base - other`` over the faces (NME points; > 0: ``other`` is better) and its standard error."""
    d = base - other
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def photo_ms(checkpoint: Path, count: int, rounds: int) -> dict[int, float]:
    """Median milliseconds of one photo through :class:`model.Landmarker` (fp32, the service's other defaults)
    with 1, 2 and 3 passes."""
    _, fmt, root, labels, _, _ = SETS[1]
    images = [load_image(s.image) for s in load_samples(fmt, root, "val", labels)[:count]]
    engine = EngineOptions(device="cpu", precision="fp32", cuda_graphs=False)
    marks = {p: Landmarker.load(checkpoint, "torch", "cpu", PipelineOptions(passes=p), engine) for p in (1, 2, 3)}
    times: dict[int, list[float]] = {p: [] for p in marks}
    marks[2](images[0])  # warm-up
    for r in range(rounds):
        for p in (1, 2, 3) if r % 2 == 0 else (3, 2, 1):
            for image in images:
                t0 = time.perf_counter()
                marks[p](image)
                times[p].append(1000 * (time.perf_counter() - t0))
    return {p: float(np.median(t)) for p, t in times.items()}


def main(args: argparse.Namespace) -> str:
    scores: dict[tuple[str, str], dict[str, float]] = {}  # (set, split) -> variant -> NME %
    per_face: dict[str, dict[str, np.ndarray]] = {}  # val set -> variant -> each face's NME %
    found_faces = {}
    for name, fmt, root, labels, norm, convention in SETS:
        options = EngineOptions(device="cpu", precision="fp32", convention=convention, cuda_graphs=False)
        engine = load_for_inference(args.checkpoint, options)
        for split in ("val", "test"):
            samples = load_samples(fmt, root, split, labels)
            key = (fmt, split)
            if key not in found_faces:  # the detector once per set and split
                found_faces[key] = find_faces(samples, "detector")
            found = found_faces[key]
            truth = np.stack([s.points for s in found[0]])
            scale = NORMALISERS[norm](truth)
            points = {p: run(engine, samples, "detector", PipelineOptions(passes=p), found=found).points
                      for p in (1, 2, 3)}  # fmt: skip
            errors = {v: 100 * nme(pts, truth, scale) for v, pts in variants(points).items()}
            if split == "val":
                per_face[name] = errors
            row = {v: float(e.mean()) for v, e in errors.items()}
            row["ground-truth boxes"] = 100 * float(nme(run(engine, found[0], "gt").points, truth, scale).mean())
            row["faces"] = len(found[0])
            scores[name, split] = row
            print(name, split, row, flush=True)
    ms = photo_ms(args.checkpoint, args.timed, args.rounds)
    gain = {(s, v): paired_gain(per_face[s][SERVED], per_face[s][v]) for s in CHOOSE_ON for v in VARIANTS}
    smaller = {v: min(gain[s, v][0] for s in CHOOSE_ON) for v in VARIANTS}
    at_three = max(AT_THREE, key=lambda v: smaller[v])
    mean_two = AT_TWO[1]
    at_two = mean_two if all(gain[s, mean_two][0] > 2 * gain[s, mean_two][1] for s in CHOOSE_ON) else SERVED
    headers = ["set", "split", "faces", *VARIANTS, "ground-truth boxes"]
    rows = [[name, split, int(r["faces"]), *(f"{r[v]:.3f}" for v in (*VARIANTS, "ground-truth boxes"))]
            for (name, split), r in scores.items()]  # fmt: skip
    lines = [
        "# Network passes per detected face, chosen on val",
        "",
        f"`python -m benchmarks.passes` on {machine()}; checkpoint `{args.checkpoint}`; YuNet's faces (the service's "
        "detector settings), fp32. NME mean %: AFLW2000-3D by the box, 300-W inter-ocular. A pass after the first is "
        "framed from the previous pass's landmarks; each is one more network run per detected face.",
        "",
        table(headers, rows),
        "",
        "Gain over the served two passes on val, NME points, ± its paired standard error over the faces:",
        "",
        table(
            ["variant", *CHOOSE_ON, "smaller"],
            [
                [v, *(f"{gain[s, v][0]:+.4f} ± {gain[s, v][1]:.4f}" for s in CHOOSE_ON), f"{smaller[v]:+.4f}"]
                for v in VARIANTS
                if v != SERVED
            ],
        ),
        "",
        f"Chosen on val: with 2 passes **{at_two}**; with 3 passes **{at_three}**.",
        "",
        f"One photo through `model.Landmarker` (YuNet, the passes, pose; fp32, {args.timed} 300-W val photos, "
        f"{args.rounds} alternating rounds, median ms): "
        + ", ".join(f"{p} pass{'es' if p > 1 else ''} {ms[p]:.1f}" for p in ms)
        + f"; 3 passes / 2: {ms[3] / ms[2]:.2f}x.",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""Video tracking and smoothing on clips with known motion: ``python -m benchmarks.stream_bench [--out FILE]``.

Clips are made from real photos (the committed test portrait and 300-W **val** faces: the filter's settings are
chosen on these, never on test): each photo is scaled so its face is ``--face-px`` wide and pasted on a 640x480
grey frame at a known, sub-pixel offset per frame (bilinear), with Gaussian sensor noise (sigma 3 grey levels):

* **still** — the face does not move, 60 frames: only the sensor noise changes the pixels, so every movement of
  the points is the network's (and the tracker's) jitter, what a filter should remove;
* **sway** — a slow sub-pixel sway within +-0.3 px per axis (sines of 1.5 and 2.3 s at 30 frames/s, random
  phase), 60 frames: resampling changes the pixels too. A low-pass filter trails this real motion, and that
  following error counts as jitter here; the **sway floor** column is it alone (the filter run on the exact known
  motion, no network), the least jitter any setting of the filter can show on this clip;
* **moving** — constant speed (4, 1) px/frame, 60 frames;
* **leave** — 8 px/frame to the right until the face is wholly out of the frame, then back to where it began.

Every clip runs through :meth:`model.Landmarker.track` (tracking, the filter on and off) and through the photo path
on every frame (``landmarker(frame)``: the detector and both passes, what a client posting each frame to
``POST /landmarks`` gets), with the same engine. Reported:

* **jitter** — RMS over frames and points of each point's deviation from the known motion (its position minus the
  frame's offset, minus that difference's mean over the clip), % of the inter-ocular distance; the first 10
  frames are left out (the filter settling);
* **lag** (moving clip) — how far the tracked points trail the photo path's, along the motion, in frames;
* **identity switches** (leave clip) — consecutive frames that both show the face in view with different
  ``track_id``; and frames with the face wholly in view but no face found;
* **frames/s** — one stream, tracking (filter on) against the photo path on every frame, on the moving clips, in
  alternating rounds so that drift of a shared machine falls on both.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from benchmarks.common import machine, publish, table
from model.landmarker import Landmarker, read_image
from model.pipeline import PhotoResult
from model.tracking import OneEuroFilter, TrackOptions
from training.metrics import inter_ocular

CANVAS = (640, 480)
SETTLE = 10  # frames left out of jitter and lag
PORTRAIT = Path("tests/data/astronaut.jpg")
VAL = Path("../shared/data/300w-subset")


@dataclass(frozen=True)
class Clip:
    name: str
    frames: list[NDArray[np.uint8]]
    offsets: NDArray[np.float64]  # (T, 2): where the face is, relative to frame 0's placement
    in_view: NDArray[np.bool_]  # (T,): the face's box wholly inside the frame


def place(photo: NDArray[np.uint8], centre: NDArray[np.float64], scale: float, at: NDArray[np.float64],
          rng: np.random.Generator) -> NDArray[np.uint8]:  # fmt: skip
    """``photo`` scaled by ``scale`` with its point ``centre`` at ``at`` on a grey canvas, plus sensor noise."""
    m = np.array([[scale, 0, at[0] - scale * centre[0]], [0, scale, at[1] - scale * centre[1]]])
    frame = cv2.warpAffine(photo, m, CANVAS, flags=cv2.INTER_LINEAR, borderValue=(110, 110, 110))
    noisy = frame.astype(np.float32) + np.asarray(rng.normal(0.0, 3.0, size=frame.shape), dtype=np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def make_clips(photo: NDArray[np.uint8], box: Sequence[float], face_px: float, seed: int) -> list[Clip]:
    rng = np.random.default_rng(seed)
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    scale = face_px / max(box[2] - box[0], box[3] - box[1])
    start = np.array([CANVAS[0] * 0.3, CANVAS[1] * 0.45])
    half = face_px / 2

    def clip(name: str, offsets: NDArray[np.float64]) -> Clip:
        frames = [place(photo, centre, scale, start + o, rng) for o in offsets]
        x, y = start[0] + offsets[:, 0], start[1] + offsets[:, 1]
        in_view = (x - half >= 0) & (x + half <= CANVAS[0] - 1) & (y - half >= 0) & (y + half <= CANVAS[1] - 1)
        return Clip(name, frames, offsets, in_view)

    t = np.arange(60)[:, None]
    still = np.zeros((60, 2))
    sway = 0.3 * np.sin(2 * np.pi * t / np.array([[45.0, 70.0]]) + rng.uniform(0, 2 * np.pi, (1, 2)))
    moving = np.arange(60)[:, None] * np.array([[4.0, 1.0]])
    out_x = CANVAS[0] - start[0] + half + 16  # wholly out of the frame
    steps = int(np.ceil(out_x / 8))
    xs = np.concatenate([np.arange(steps + 1) * 8.0, np.arange(steps, -1, -1) * 8.0])
    leave = np.stack([xs, np.zeros_like(xs)], axis=1)
    return [clip("still", still), clip("sway", sway), clip("moving", moving), clip("leave", leave)]


Picked = tuple[NDArray[np.float64] | None, int | None]


def pick(result: PhotoResult, expected: NDArray[np.float64], radius: float) -> Picked:
    """The face whose points' centre is nearest ``expected`` (within ``radius``): its points and track id."""
    best: tuple[float, NDArray[np.float64] | None, int | None] = (radius, None, None)
    for face in result.faces:
        d = float(np.linalg.norm(face.landmarks.points.mean(axis=0) - expected))
        if d < best[0]:
            best = (d, face.landmarks.points, face.track_id)
    return best[1], best[2]


@dataclass
class Run:
    points: list[NDArray[np.float64] | None]
    ids: list[int | None]
    seconds: float


def run_clip(landmarker: Landmarker, clip: Clip, mode: str, options: TrackOptions, centre0: NDArray[np.float64],
             radius: float) -> Run:  # fmt: skip
    """``mode``: ``track`` (``options``) or ``photo`` (the photo path on every frame)."""
    t0 = time.perf_counter()
    if mode == "photo":
        results = [landmarker(frame) for frame in clip.frames]
    else:
        results = list(landmarker.track(clip.frames, options))
    seconds = time.perf_counter() - t0
    points, ids = [], []
    for result, offset in zip(results, clip.offsets, strict=True):
        p, i = pick(result, centre0 + offset, radius)
        points.append(p)
        ids.append(i)
    return Run(points, ids, seconds)


def jitter(run: Run, clip: Clip) -> float:
    """RMS deviation from the known motion, % of the inter-ocular distance (frames with the face found)."""
    resid = [p - o for p, o in zip(run.points[SETTLE:], clip.offsets[SETTLE:], strict=True) if p is not None]
    r = np.stack(resid)
    dev = r - r.mean(axis=0)
    return 100 * float(np.sqrt((dev**2).sum(axis=-1).mean())) / float(inter_ocular(r.mean(axis=0)[None])[0])


def filter_floor(run: Run, clip: Clip, options: TrackOptions) -> float:
    """The jitter :func:`jitter` gives for the filter fed a perfect network: ``run``'s mean face moved by the clip's
    exact known motion. What the filter's trailing behind real motion adds, whatever the network does."""
    face = np.mean([p - o for p, o in zip(run.points, clip.offsets, strict=True) if p is not None], axis=0)
    scale = float(np.ptp(face, axis=0).max())  # the tracker's scale: its points' box
    f = OneEuroFilter(options.min_cutoff, options.beta, options.d_cutoff)
    perfect = Run([f(face + o, t / options.fps, scale) for t, o in enumerate(clip.offsets)], [], 0.0)
    return jitter(perfect, clip)


def lag(run: Run, reference: Run, clip: Clip) -> float:
    """Mean distance the points trail ``reference``'s along the motion, in frames."""
    velocity = clip.offsets[1] - clip.offsets[0]
    speed = float(np.linalg.norm(velocity))
    pairs = [(p, q) for p, q in zip(run.points[SETTLE:], reference.points[SETTLE:], strict=True)
             if p is not None and q is not None]  # fmt: skip
    trail = [float(((q - p) @ (velocity / speed)).mean()) for p, q in pairs]
    return float(np.mean(trail)) / speed


def switches(run: Run, clip: Clip) -> tuple[int, int]:
    """(identity switches while in view, in-view frames with no face)."""
    switched = sum(
        1
        for t in range(1, len(run.ids))
        if clip.in_view[t] and clip.in_view[t - 1] and run.ids[t] is not None and run.ids[t - 1] is not None
        and run.ids[t] != run.ids[t - 1]
    )  # fmt: skip
    missed = sum(1 for t, p in enumerate(run.points) if clip.in_view[t] and p is None)
    return switched, missed


def photos(count: int) -> list[tuple[str, NDArray[np.uint8]]]:
    out = [(PORTRAIT.name, read_image(PORTRAIT))]
    names = (VAL / "val.txt").read_text().split() if (VAL / "val.txt").exists() else []
    for name in names[: max(0, count - 1)]:
        stem = Path(name).stem
        out.append((stem, read_image(VAL / "images" / f"{stem}.jpg")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=5, help="the portrait and the first N-1 300-W val faces")
    parser.add_argument("--face-px", type=float, default=150.0)
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--rounds", type=int, default=2, help="alternating speed rounds per photo")
    parser.add_argument("--min-cutoff", type=float, default=TrackOptions.min_cutoff)
    parser.add_argument("--beta", type=float, default=TrackOptions.beta)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    landmarker = Landmarker.load(runtime=args.runtime, max_faces=4)
    filtered = TrackOptions(min_cutoff=args.min_cutoff, beta=args.beta)
    raw = replace(filtered, smoothing=False)
    rows: list[dict[str, object]] = []
    speed = {"track": 0.0, "photo": 0.0}
    frames = {"track": 0, "photo": 0}
    for index, (name, photo) in enumerate(photos(args.photos)):
        found = landmarker(photo)
        if not found.faces:
            print(f"{name}: no face found, skipped")
            continue
        box = found.faces[0].box
        clips = make_clips(photo, box, args.face_px, seed=index)
        start = np.array([CANVAS[0] * 0.3, CANVAS[1] * 0.45])
        still, sway, moving, leave = clips
        run = {(c.name, m): run_clip(landmarker, c, m, o, start, args.face_px / 2)
               for c in clips for m, o in (("track", filtered), ("raw", raw), ("photo", raw))
               if not (c.name == "leave" and m != "track")}  # fmt: skip
        for r in range(args.rounds):  # frames/s: alternating, on the moving clip
            for mode in ("track", "photo") if r % 2 == 0 else ("photo", "track"):
                timed = run_clip(landmarker, moving, mode, filtered, start, args.face_px / 2)
                speed[mode] += timed.seconds
                frames[mode] += len(moving.frames)
        switched, missed = switches(run["leave", "track"], leave)
        row = {
            "photo": name,
            "still jitter photo": jitter(run["still", "photo"], still),
            "still jitter raw": jitter(run["still", "raw"], still),
            "still jitter filtered": jitter(run["still", "track"], still),
            "sway jitter raw": jitter(run["sway", "raw"], sway),
            "sway jitter filtered": jitter(run["sway", "track"], sway),
            "sway floor": filter_floor(run["sway", "raw"], sway, filtered),
            "moving jitter raw": jitter(run["moving", "raw"], moving),
            "moving jitter filtered": jitter(run["moving", "track"], moving),
            "lag raw": lag(run["moving", "raw"], run["moving", "photo"], moving),
            "lag filtered": lag(run["moving", "track"], run["moving", "photo"], moving),
            "switches": switched,
            "missed": missed,
        }
        rows.append(row)
        print(json.dumps(row))
    keys = [k for k in rows[0] if k != "photo"]
    mean = {k: float(np.mean([float(r[k]) for r in rows])) for k in keys}  # type: ignore[arg-type]
    fps = {m: frames[m] / speed[m] for m in speed}
    lines = [
        "# Video: tracking and smoothing on clips with known motion",
        "",
        f"`python -m benchmarks.stream_bench --photos {args.photos} --runtime {args.runtime}"
        + (f" --threads {args.threads}" if args.threads else "") + f"` on {machine()}; "
        f"faces {args.face_px:g} px wide on 640x480 frames; filter min_cutoff {args.min_cutoff:g} Hz, "
        f"beta {args.beta:g}; tracking detects every {filtered.detect_every} frames.",
        "",
        "Jitter: RMS deviation from the known motion, % of the inter-ocular distance. Lag: frames the points trail "
        "the photo path (detector and both passes on every frame) along the motion. photo: the photo path; raw: "
        "tracking with the filter off; filtered: tracking with the One Euro filter. still: the face does not "
        "move (sensor noise only); sway: a +-0.3 px sub-pixel sway, whose floor is what the filter's trailing "
        "behind that motion alone adds (the filter fed the exact motion).",
        "",
        table(["photo", *keys], [[r["photo"], *[r[k] for k in keys]] for r in rows] + [["mean", *mean.values()]]),
        "",
        f"Filtered / raw jitter on the still clip: {mean['still jitter filtered'] / mean['still jitter raw']:.2f} "
        f"(target <= 0.5); lag with the filter {mean['lag filtered']:.2f} frames (target <= 1); identity switches "
        f"in view {int(sum(int(r['switches']) for r in rows))} (target 0).",  # type: ignore[call-overload]
        "",
        f"Sway clip: filtered / raw {mean['sway jitter filtered'] / mean['sway jitter raw']:.2f}, of which the "
        f"filter's trailing behind the motion alone is {mean['sway floor']:.3f} % io.",
        "",
        "One stream, frames/s on the moving clips (" + f"{args.rounds} alternating rounds per photo):",
        "",
        table(["mode", "frames", "frames/s"], [["tracking (filter on)", frames["track"], fps["track"]],
                                               ["photo path on every frame", frames["photo"], fps["photo"]]]),
        "",
        f"Tracking / photo path: **{fps['track'] / fps['photo']:.2f}x** (target >= 1.8).",
    ]  # fmt: skip
    print(publish(lines, args.out))
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "mean": mean, "fps": fps}, indent=2))


if __name__ == "__main__":
    main()

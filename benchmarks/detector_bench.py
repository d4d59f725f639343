"""Face detector benchmark: recall, extra boxes and time per photo, and the service's no-box request rate.

    python -m benchmarks.detector_bench [--out benchmarks/results/detector.md]

Recall on the AFLW2000-3D val split (by absolute yaw) and the 300-W subset's val split: a face counts as found
when a detection's centre lies inside its ground-truth landmark box (``model.detector.match_detection``); extra
boxes are the other detections per image (some are real unannotated faces). Time per photo is the median over
real val photos resized to 512x512 and 1280x1024. The service rate is the no-box path (decode, detection, both
passes) at 1 and 8 connections from wrk, on the default settings with each detector.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.common import machine, publish, table
from benchmarks.service_bench import DATA, drive, write_bodies
from model.artifacts import SHIPPED_CHECKPOINT
from model.detector import Detection, YuNetDetector, match_detection
from model.geometry import box_from_points
from tests.support.server import running_server
from training.datasets import Sample, load_image, load_samples
from training.metrics import YAW_BINS

W300 = DATA.parent / "300w-subset"

Detector = Callable[[np.ndarray], list[Detection]]


def build(name: str) -> Detector:
    if name != "yunet":
        raise SystemExit(f"unknown detector {name!r}: the service has YuNet (the Haar cascades were removed)")
    return YuNetDetector()


def recall(detector: Detector, samples: list[Sample]) -> tuple[np.ndarray, float]:
    """Per-sample found flags and the mean number of extra boxes per image."""
    found, extra = [], 0
    for s in samples:
        dets = detector(load_image(s.image))
        hit = match_detection(dets, box_from_points(s.points)) is not None
        found.append(hit)
        extra += len(dets) - int(hit)
    return np.array(found), extra / len(samples)


def photo_ms(detector: Detector, photos: list[np.ndarray]) -> float:
    times = []
    for photo in photos * 3:
        t0 = time.perf_counter()
        detector(photo)
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times[len(photos) :]))  # first round warms up


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detectors", default="yunet", help="yunet (results/detector.md also holds the removed Haar)")
    p.add_argument("--clients", default="1,8")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    p.add_argument("--out", type=Path, default=None)
    return p


def main(args: argparse.Namespace) -> str:
    aflw = load_samples("aflw2000", DATA, "val", "pts")
    w300 = load_samples("pts_folder", W300, "val")
    yaws = np.abs(np.array([s.yaw for s in aflw], dtype=np.float64))
    photos = [load_image(s.image) for s in aflw[:20]]
    sizes = {"512x512": (512, 512), "1280x1024": (1280, 1024)}
    names = args.detectors.split(",")
    clients = [int(c) for c in args.clients.split(",")]
    rows, rate_rows = [], []
    for name in names:
        detector = build(name)
        found_a, extra_a = recall(detector, aflw)
        found_w, extra_w = recall(detector, w300)
        bins = [100 * found_a[(yaws >= lo) & (yaws < hi)].mean() for lo, hi in YAW_BINS]
        times = [
            photo_ms(detector, [cv2.resize(p, size, interpolation=cv2.INTER_LINEAR) for p in photos])
            for size in sizes.values()
        ]
        rows.append(
            [
                name,
                f"{100 * found_a.mean():.1f}",
                *(f"{b:.1f}" for b in bins),
                f"{extra_a:.2f}",
                f"{100 * found_w.mean():.1f}",
                f"{extra_w:.2f}",
                *(f"{t:.1f}" for t in times),
            ]
        )
        print(name, rows[-1], flush=True)
    if shutil.which("wrk") is not None:
        with tempfile.TemporaryDirectory() as tmp:
            count = write_bodies(Path(tmp), 64, with_boxes=False)
            for name in names:
                settings = {"torch_threads": str(torch.get_num_threads())}
                log = Path(tmp) / f"server-{name}.log"
                with running_server(args.checkpoint, log, **settings) as (base, _):
                    for c in clients:
                        r = drive(base, Path(tmp), count, c, args.seconds)
                        rate_rows.append(
                            [name, c, f"{r['throughput']:.1f}", f"{r['p50']:.0f}", f"{r['p95']:.0f}", int(r["errors"])]
                        )
                        print(rate_rows[-1], flush=True)
    bin_names = [
        f"AFLW yaw {lo:.0f}-{hi:.0f}°" if hi != float("inf") else f"AFLW yaw ≥ {lo:.0f}°" for lo, hi in YAW_BINS
    ]
    lines = [
        "# Face detectors",
        "",
        f"Machine: {machine()}",
        "",
        f"Recall (%) on AFLW2000-3D val ({len(aflw)} faces) and the 300-W subset's val split ({len(w300)} faces); "
        "extra = other detections per image; ms = median detection time per photo.",
        "",
        table(
            [
                "detector",
                "AFLW val recall",
                *bin_names,
                "AFLW extra",
                "300-W val recall",
                "300-W extra",
                *(f"ms / {k} photo" for k in sizes),
            ],
            rows,
        ),
        "",
    ]
    if rate_rows:
        lines += [
            "Service without `boxes` (decode, detection, both passes), default settings, 64 AFLW2000-3D val photos, "
            f"{args.seconds} s per level, wrk on the same machine:",
            "",
            table(["detector", "connections", "req/s", "p50 ms", "p95 ms", "errors"], rate_rows),
            "",
        ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

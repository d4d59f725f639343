"""Fit the map from the Haar cascades' boxes to our landmark-box convention: ``python -m training.fit_detector``.

Runs the service's detector with raw boxes over a split, matches each annotated face, and prints the median
centre offset and size factor per cascade (to paste into ``app/detector.py``'s ``BOX_MAPS``) and the recall.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.detector import HaarDetector, match_detection
from training.datasets import load_image, read_aflw2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/aflw2000-3d"))
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    samples = read_aflw2000(args.data, args.split, "pts")
    detector = HaarDetector(map_boxes=False)
    stats: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for s in tqdm(samples, desc="detect"):
        x1, y1 = s.points.min(0)
        x2, y2 = s.points.max(0)
        det = match_detection(detector(load_image(s.image)), np.array([x1, y1, x2, y2]))
        if det is None:
            continue
        bx1, by1, bx2, by2 = det.box
        w, h = bx2 - bx1, by2 - by1
        dx = ((x1 + x2) / 2 - (bx1 + bx2) / 2) / w
        kind = det.kind.removesuffix("_mirrored")
        stats[kind].append(
            (
                -dx if det.kind.endswith("_mirrored") else dx,
                ((y1 + y2) / 2 - (by1 + by2) / 2) / h,
                (x2 - x1) / w,
                (y2 - y1) / h,
            )
        )
    found = sum(len(v) for v in stats.values())
    print(f"recall {found}/{len(samples)} = {100 * found / len(samples):.1f} %")
    for kind, rows in stats.items():
        dx, dy, sw, sh = np.median(np.array(rows), axis=0)
        print(f'    "{kind}": BoxMap(dx={dx:.3f}, dy={dy:.3f}, sw={sw:.3f}, sh={sh:.3f}),  # {len(rows)} faces')


if __name__ == "__main__":
    main()

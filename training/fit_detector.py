"""Fit the map from YuNet's boxes to our landmark-box convention: ``python -m training.fit_detector``.

Runs the detector with its raw boxes over the train splits (never val), matches each annotated face, and prints
the median centre offset and size factors (to paste into ``model/detector.py``'s ``BOX_MAP``) with the recall
and how tightly the mapped boxes fit (median IoU with the ground-truth landmark box, before and after).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.detector import BoxMap, YuNetDetector, iou, match_detection
from model.geometry import box_from_points
from training.datasets import DataError, load_image, samples_from_spec

DEFAULT_SETS = (
    "aflw2000:../shared/data/aflw2000-3d:train",
    "pts_folder:../shared/data/300w-subset:train",
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), metavar="FORMAT:ROOT:SPLIT")
    p.add_argument("--max-side", type=int, default=640)
    p.add_argument("--out", type=Path, default=None, help="write the fit as JSON")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    detector = YuNetDetector(max_side=args.max_side, box_map=None)
    rows, total = [], 0
    for spec in args.sets:
        samples = samples_from_spec(spec)
        total += len(samples)
        for s in tqdm(samples, desc=f"detect {spec}", disable=not sys.stderr.isatty()):
            x1, y1, x2, y2 = box_from_points(s.points)
            det = match_detection(detector(load_image(s.image)), np.array([x1, y1, x2, y2]))
            if det is None:
                continue
            bx1, by1, bx2, by2 = det.box
            w, h = bx2 - bx1, by2 - by1
            rows.append(
                (
                    ((x1 + x2) / 2 - (bx1 + bx2) / 2) / w,
                    ((y1 + y2) / 2 - (by1 + by2) / 2) / h,
                    (x2 - x1) / w,
                    (y2 - y1) / h,
                    iou(det.box, (x1, y1, x2, y2)),
                    det,
                    (x1, y1, x2, y2),
                )
            )
    dx, dy, sw, sh = (float(v) for v in np.median(np.array([r[:4] for r in rows]), axis=0))
    fitted = BoxMap(round(dx, 3), round(dy, 3), round(sw, 3), round(sh, 3))
    mapped = [
        iou(fitted.apply(r[5].box[0], r[5].box[1], r[5].box[2] - r[5].box[0], r[5].box[3] - r[5].box[1]), r[6])
        for r in rows
    ]
    result = {
        "sets": args.sets,
        "faces": total,
        "matched": len(rows),
        "recall": len(rows) / total,
        "box_map": fitted.__dict__,
        "median_iou_raw": float(np.median([r[4] for r in rows])),
        "median_iou_mapped": float(np.median(mapped)),
    }
    print(json.dumps(result, indent=2))
    print(f"BOX_MAP = BoxMap(dx={fitted.dx}, dy={fitted.dy}, sw={fitted.sw}, sh={fitted.sh})")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return result


def cli() -> None:
    try:
        main(get_args_parser().parse_args())
    except DataError as exc:  # a malformed spec, a missing folder or file: one line, not a traceback
        raise SystemExit(f"fit_detector: {exc}") from None


if __name__ == "__main__":
    cli()

"""Pre-crop a training config's data sets into small face images, for training away from the data (a lent GPU).

    python -m training.precrop --config training/configs/multi_cpu.yaml --out cache/multi

Every sample of every train and val set is cut to the square of side ``--context`` x its landmark box (enough for
the augmentation's rotation, scale and shift), resized with area averaging so the box's long side is
``--face-px`` pixels, and written as ``<out>/<set>/images/<stem>.webp`` (or ``.jpg``) + ``.pts`` (the 300-W
layout) with one ``<split>.txt`` per split. ``<out>/config.yaml`` is the same config reading those folders
(``pts_folder``), so ``python -m training.train --config <out>/config.yaml`` trains on the crops. The crops keep
the pixel convention of :mod:`model.geometry` exactly (area resize, then an integer-offset cut), so the landmarks
stay exact.

The crops are derived from research-only data: keep them in an ignored folder (``cache/``), never commit them.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from numpy.typing import NDArray
from tqdm import tqdm

from model.geometry import box_from_points
from training.cli import run_cli
from training.config import DatasetSpec, TrainConfig, load_config
from training.datasets import Sample, load_image, load_samples, write_pts

log = logging.getLogger("training.precrop")


def cut(image: NDArray[Any], points: NDArray[np.float64], face_px: int, context: float) -> tuple[Any, Any]:
    """The square around the face, long box side -> ``face_px``; returns the crop and the points in it."""
    x1, y1, x2, y2 = box_from_points(points)
    scale = min(1.0, face_px / max(x2 - x1, y2 - y1, 1.0))
    if scale < 1.0:
        h, w = image.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        sx, sy = size[0] / w, size[1] / h
        points = np.stack([(points[:, 0] + 0.5) * sx - 0.5, (points[:, 1] + 0.5) * sy - 0.5], axis=1)
        x1, y1, x2, y2 = box_from_points(points)
    side = math.ceil(context * max(x2 - x1, y2 - y1))
    left, top = round((x1 + x2) / 2 - side / 2), round((y1 + y2) / 2 - side / 2)
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    crop = padded[top + pad : top + pad + side, left + pad : left + pad + side]
    return np.ascontiguousarray(crop), points - np.array([left, top], dtype=np.float64)


def write_set(
    samples: list[Sample], folder: Path, split: str, face_px: int, context: float, quality: int, suffix: str
) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for sample in tqdm(samples, desc=f"{folder.name}/{split}", disable=not sys.stderr.isatty(), dynamic_ncols=True):
        crop, points = cut(load_image(sample.image), sample.points, face_px, context)
        params = [cv2.IMWRITE_WEBP_QUALITY if suffix == ".webp" else cv2.IMWRITE_JPEG_QUALITY, quality]
        cv2.imwrite(str(folder / "images" / f"{sample.name}{suffix}"), crop[:, :, ::-1], params)
        write_pts(folder / "images" / f"{sample.name}.pts", points)
    (folder / f"{split}.txt").write_text("".join(f"{s.name}\n" for s in samples))


def precrop(
    cfg: TrainConfig, out: Path, face_px: int, context: float, quality: int, suffix: str = ".jpg"
) -> dict[str, Any]:
    """Write the crops and return the config (as a dict) that trains on them."""

    def convert(spec: DatasetSpec, role: str) -> dict[str, Any]:
        split = spec.split or role
        samples = load_samples(spec.format, spec.root, spec.split, spec.labels, cfg.skip_bad)
        write_set(samples, out / spec.key, split, face_px, context, quality, suffix)
        data = spec.model_dump(mode="json")
        data.update(format="pts_folder", root=str(out / spec.key), split=split, labels=None, name=spec.key)
        sources = {x.source for x in samples}
        if data.get("source") is None and len(sources) == 1:  # the crops' stems no longer say it (AFLW2000-3D)
            data["source"] = sources.pop()
        return data

    data = cfg.model_dump(mode="json")
    data["train"] = [convert(spec, "train") for spec in cfg.train]
    data["val"] = [convert(spec, "val") for spec in cfg.val]
    return data


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="training config whose data sets to crop")
    p.add_argument("--out", type=Path, required=True, help="output folder (keep it git-ignored)")
    p.add_argument("--face-px", type=int, default=128, help="long side of the landmark box in the crop")
    p.add_argument("--context", type=float, default=2.2, help="crop side as a multiple of the box's long side")
    p.add_argument("--quality", type=int, default=90, help="JPEG or WebP quality")
    p.add_argument("--image-format", default="webp", choices=["webp", "jpg"], help="webp: ~30 %% smaller")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.config)
    data = precrop(cfg, args.out, args.face_px, args.context, args.quality, f".{args.image_format}")
    (args.out / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    log.info("wrote %s and %s/config.yaml", args.out, args.out)
    return data


def cli() -> None:
    run_cli(main, get_args_parser())


if __name__ == "__main__":
    cli()

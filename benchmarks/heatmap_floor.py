"""How much error the heatmap representation itself costs: ground truth encoded and decoded, no network.

    python -m benchmarks.heatmap_floor [--out benchmarks/results/heatmap_floor.md]

Each val and test face's true landmarks are mapped into its crop (the ground-truth box crop the pipeline makes),
encoded as the training targets are (:func:`model.codec.encode`), decoded as the service decodes
(:func:`model.codec.decode`), mapped back to the image, and scored like a prediction. This is the floor a perfect
network would reach at each preset's heatmap resolution (``cpu``: 128² input, 32² heatmaps; ``paper_s4``: 256²,
64²; ``paper``: 256², 256²), to weigh against the shipped model's NME. Points that fall outside the heatmap (a
face whose crop cuts it) are clipped by the decoder, as they would be for the network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, publish, table
from model.codec import decode, encode
from model.config import preset
from model.geometry import box_from_points, crop_matrix, crop_to_heatmap, heatmap_to_crop, invert, transform_points
from training.datasets import load_samples
from training.metrics import NORMALISERS, nme

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = [  # (title, format, root, labels, norm)
    ("AFLW2000-3D", "aflw2000", SHARED / "aflw2000-3d", "pts", "box"),
    ("300-W subset", "pts_folder", SHARED / "300w-subset", None, "inter_ocular"),
]
PRESETS = ("cpu", "paper_s4", "paper")


def round_trip(points: np.ndarray, name: str) -> np.ndarray:
    """``(N, 68, 2)`` image points through crop -> heatmap encode -> decode -> image, for a preset."""
    config = preset(name)
    out = np.empty_like(points)
    for i, pts in enumerate(points):
        matrix = crop_matrix(box_from_points(pts), config.input_size)
        hm = torch.from_numpy(crop_to_heatmap(transform_points(matrix, pts), config.heatmap_stride)).float()
        decoded, _ = decode(encode(hm, config.heatmap_size, config.heatmap_sigma))
        crop = heatmap_to_crop(decoded.double().numpy(), config.heatmap_stride)
        out[i] = transform_points(invert(matrix), crop)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None)
    return p


def main(args: argparse.Namespace) -> str:
    rows: list[list[object]] = []
    for title, fmt, root, labels, norm in SETS:
        for split in ("val", "test"):
            truth = np.stack([s.points for s in load_samples(fmt, root, split, labels)])
            scale = NORMALISERS[norm](truth)
            cells: list[object] = [f"{title} {split}", norm.replace("_", "-"), len(truth)]
            for name in PRESETS:
                cells.append(f"{100 * float(nme(round_trip(truth, name), truth, scale).mean()):.3f}")
            rows.append(cells)
            print(rows[-1], flush=True)
    sizes = ", ".join(f"`{n}` {preset(n).input_size}² → {preset(n).heatmap_size}²" for n in PRESETS)
    lines = [
        "# The heatmap's own error: ground truth encoded and decoded (no network)",
        "",
        f"Machine: {machine()}. One run of `python -m benchmarks.heatmap_floor`. Presets: {sizes}.",
        "",
        table(["split", "NME", "faces", *(f"`{n}` NME %" for n in PRESETS)], rows),
        "",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

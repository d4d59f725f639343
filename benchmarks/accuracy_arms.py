"""Compare training arms on what the accuracy issue chooses by: ``python -m benchmarks.accuracy_arms NAME=CKPT ...``.

For each checkpoint, with ground-truth boxes, fp32, the service's pipeline (``training.evaluate``): the val NME of
both sets and their mean (what is chosen on), stage 2 NME by landmark group on 300-W val, the mean x offset of the
predictions by annotation source on both val splits (the flip's signature), and the AFLW2000-3D **test** NME by
absolute yaw (reported, never chosen on: the shipped model may not lose a yaw bin to the one it replaces).
Writes a markdown table to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import table
from model.engine import EngineOptions
from model.inference import load_for_inference
from training.datasets import load_samples
from training.evaluate import REGIONS, report, run

SETS = {  # name: (format, root, labels, norm)
    "aflw2000": ("aflw2000", Path("../shared/data/aflw2000-3d"), "pts", "box"),
    "300w": ("pts_folder", Path("../shared/data/300w-subset"), None, "inter_ocular"),
}


def measure(checkpoint: Path) -> dict[str, Any]:
    options = EngineOptions(device="cpu", precision="fp32", max_batch_size=32, cuda_graphs=False)
    engine = load_for_inference(checkpoint, options)
    out: dict[str, Any] = {}
    for name, (fmt, root, labels, norm) in SETS.items():
        for split in ("val", "test") if name == "aflw2000" else ("val",):
            samples = load_samples(fmt, root, split, labels)
            ev = run(engine, samples, "gt")
            gt = np.stack([s.points for s in ev.samples])
            res = report(ev, gt, fmt)
            block = next(v for v in res.values() if isinstance(v, dict) and "stage2" in v.get("box", {}))
            out[f"{name}_{split}"] = {
                "nme": block[norm]["stage2"]["nme_mean"],
                "groups": res["landmark_groups"][norm],
                "offsets": res["offsets"][norm],
                "yaw": res.get("yaw_bins_box", {}).get("stage2"),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", nargs="+", metavar="NAME=CHECKPOINT")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="Training arms")
    args = parser.parse_args()
    results = {}
    for arm in args.arms:
        name, _, path = arm.partition("=")
        results[name] = measure(Path(path))
        print(name, {k: round(v["nme"], 3) for k, v in results[name].items()}, flush=True)
    rows, groups, offsets, yaws = [], [], [], []
    for name, r in results.items():
        a, w = r["aflw2000_val"]["nme"], r["300w_val"]["nme"]
        rows.append([name, f"{a:.3f}", f"{w:.3f}", f"**{(a + w) / 2:.3f}**"])
        groups.append([name, *(f"{r['300w_val']['groups'][g]:.2f}" for g in REGIONS)])
        sources = {**r["300w_val"]["offsets"], **r["aflw2000_val"]["offsets"]}
        offsets.append([name, *(f"{v['x_pct']:+.2f} / {v['y_pct']:+.2f}" for v in sources.values())])
        yaw = r["aflw2000_test"]["yaw"]
        yaws.append(
            [name, *(f"{yaw[k]:.2f}" for k in ("[0,30)", "[30,60)", "[60,90]")), f"{r['aflw2000_test']['nme']:.2f}"]
        )
    first = next(iter(results.values()))
    source_names = [*first["300w_val"]["offsets"], *first["aflw2000_val"]["offsets"]]
    lines = [
        f"# {args.title}",
        "",
        f"Command: `python -m benchmarks.accuracy_arms {' '.join(args.arms)} --out {args.out}`",
        "",
        "Ground-truth boxes, fp32, the service's pipeline. Chosen on the mean of the two val NMEs (last column).",
        "",
        table(["arm", "AFLW2000-3D val box NME %", "300-W val inter-ocular NME %", "mean"], rows),
        "",
        "300-W val, stage 2 inter-ocular NME % by landmark group:",
        "",
        table(["arm", *REGIONS], groups),
        "",
        "Mean offset of the predictions (prediction - label), x / y, % of the set's normalisation (inter-ocular for "
        "the 300-W sources, box for AFLW2000-3D), val splits, by annotation source:",
        "",
        table(["arm", *source_names], offsets),
        "",
        "AFLW2000-3D **test** box NME % by absolute yaw (reported, not chosen on):",
        "",
        table(["arm", "0-30°", "30-60°", "60-90°", "all"], yaws),
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

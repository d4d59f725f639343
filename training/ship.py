"""Package a trained run as the checkpoint the service ships, with its reports and model card.

    python -m training.ship --run runs/aflw2000_cpu [--weights-dir model/weights]

Steps: calibrate the confidence on the val split (``training.calibrate``) into ``dsc_landmarks_cpu.pt``; evaluate
it with ground-truth boxes on both AFLW2000-3D label sets and with the service's detector (with and without the
second pass); copy the resolved training config and the per-epoch log; write ``README.md`` (the model card) from
those files, so every number in it comes from a committed report. A ``NOTES.md`` in the run folder (what
happened during the run that its log alone does not say) is copied into the card.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

CHECKPOINT = "dsc_landmarks_cpu.pt"


def python(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


def block(report: dict[str, Any], labels: str) -> dict[str, Any]:
    res = report["label_sets"][labels]
    return next(v for v in res.values() if isinstance(v, dict) and "box" in v)


def card(weights: Path, run_notes: str = "") -> str:
    gt = json.loads((weights / "report" / "report.json").read_text())
    det = json.loads((weights / "report_detector" / "report.json").read_text())
    det2 = json.loads((weights / "report_detector_second_pass" / "report.json").read_text())
    cal = json.loads((weights / "calibration.json").read_text())
    log = [json.loads(line) for line in (weights / "log.jsonl").read_text().splitlines()]
    best = min(log, key=lambda r: r.get("val_nme_box", float("inf")))
    pts = block(gt, "pts")
    rows = []
    for labels in ("pts", "mat"):
        b = block(gt, labels)
        for norm in ("box", "inter_ocular", "inter_pupil"):
            for stage in ("stage2", "stage1"):
                s = b[norm][stage]
                rows.append(
                    f"| {labels} | {norm} | {stage} | {s['nme_mean']:.2f} | {s['nme_median']:.2f} | "
                    f"{s['auc_0.07']:.1f} | {s['failure_0.07']:.1f} | {s['failure_0.10']:.1f} |"
                )
    yaw = gt["label_sets"]["pts"]["yaw_bins_box"]
    keys = [k for k in yaw["stage2"] if not k.endswith("_count")]
    yaw_rows = [
        f"| {stage} | " + " | ".join(f"{yaw[stage][k]:.2f}" for k in keys) + " |" for stage in ("stage2", "stage1")
    ]
    counts = " | ".join(f"{yaw['stage2'][k + '_count']:.0f}" for k in keys[:-1])
    d1, d2 = block(det, "pts")["box"]["stage2"], block(det2, "pts")["box"]["stage2"]
    recall = det["label_sets"]["pts"]["detector_recall"]
    box = pts["box"]["stage2"]
    notes = f"\n## Notes on this run\n\n{run_notes.strip()}\n" if run_notes.strip() else ""
    return f"""# Shipped model: `{CHECKPOINT}`

The `cpu` preset of the paper's two-stage network (128×128 input, 32×32 heatmaps, FC-DenseNet56 + kernel
convolution + dilated skip convolution refiner; 2.55 M parameters), trained on the 1,400-image train split of
`../shared/data/aflw2000-3d` (2D re-annotation labels, `.pts`) and selected on its 200-image val split.
**Licence: AFLW2000-3D is for research and non-commercial use only, and so are these weights.**

Best epoch {best["epoch"] + 1} of {len(log)} logged (config: `config.yaml`, per-epoch log: `log.jsonl`).

## Accuracy on the val split (200 faces, boxes from the ground-truth landmarks)

Box-normalised mean NME: **{box["nme_mean"]:.2f} %** (median {box["nme_median"]:.2f} %, AUC@0.07
{box["auc_0.07"]:.1f} %, failure rate at 0.07 {box["failure_0.07"]:.1f} %). Full report: `report/report.md`,
CED: `report/ced.png`.

| labels | normalisation | stage | NME mean % | NME median % | AUC@0.07 % | fail@0.07 % | fail@0.10 % |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

`pts` = the 2D re-annotation the model was trained on; `mat` = the original `pt3d_68` (jaw points on the 3D
surface rather than the visible contour, so larger errors there). Stage 1 = H0 (FC-DenseNet + kernel conv),
stage 2 = H_f (after the dilated skip convolution refiner). Inter-ocular and inter-pupil normalisation blow up on
large-yaw faces, whose eye corners nearly coincide in the image; that is why AFLW2000-3D results use the box.

Box-normalised NME (%) by absolute yaw (3DDFA protocol, `pts` labels):

| stage | {" | ".join(keys)} |
|---{"|---" * len(keys)}|
{chr(10).join(yaw_rows)}
| faces | {counts} | {pts_count(gt)} |

These numbers are **not comparable to the paper's AFLW2000-3D result** (4.04 %): the paper never trains on
AFLW2000-3D (it trains on 61k 300W-LP images and tests on all 2,000), while this model is trained on 1,400
AFLW2000-3D images and validated on 200 others of the same set, at a quarter of the paper's resolution.

## Confidence

Per-point confidence is a raw score — the geometric mean of the point's peak heights in H_f and H0 and of the
face's mean over its points (`model.codec.confidence`) — mapped by an isotonic fit (`calibration.json`,
`calibration.png`) to the probability that the point lies within {100 * cal["tolerance"]:.0f} % of the face size
of the truth. Spearman(confidence, error) on val: **{cal["spearman_calibrated"]:.3f}** (raw score
{cal["spearman_raw"]:.3f}; the map is monotone, its flat steps only add ties). Expected calibration error
{cal["ece_raw"]:.3f} → {cal["ece_calibrated"]:.3f} — fitted and measured on the same 200 faces, so the second
number is optimistic.

## With the service's detector

The Haar detector finds **{100 * recall:.1f} %** of the val faces ({block(det, "pts")["box"]["stage2"]["count"]:.0f}
/ 200). On those faces, box NME with its boxes is {d1["nme_mean"]:.2f} % after one pass and
**{d2["nme_mean"]:.2f} %** with the second pass the service runs by default (`report_detector*/`).

## Reproduce

```bash
.venv/bin/python -m training.train --config training/configs/aflw2000_cpu.yaml   # --resume to continue
.venv/bin/python -m training.ship --run runs/aflw2000_cpu                        # this folder
```

Deviations from the paper's recipe (`training/configs/paper_300wlp.yaml` keeps the paper's), and why:

| paper | here | why |
|---|---|---|
{chr(10).join(f"| {a} | {b} | {c} |" for a, b, c in DEVIATIONS)}
{notes}"""


DEVIATIONS = (
    (
        "300W-LP (61k images), 256² input, heatmaps at input resolution",
        "AFLW2000-3D train split (1,400), 128² input, 32² heatmaps",
        "the data available here, and a 2-core CPU: ~0.06 s per sample per training step in bf16",
    ),
    (
        "RMSprop, lr 1e-4 → 1e-5 → 1e-6, 100 epochs",
        "AdamW, one-cycle to lr 1e-3, 120 epochs, batch 16",
        "the recipe of the prototype measured in the issue (6.4 % in 12 epochs); RMSprop at 1e-4 was not run here",
    ),
    ("rotation ±50°, scale 0.8–1.2", "rotation ±40°, scale 0.85–1.15", "as in that prototype"),
    (
        "loss on H_f (eq. 9)",
        "eq. 9 on H_f + 0.5 × eq. 9 on H0",
        "keeps stage 1 a detector so both stages can be reported",
    ),
    (
        "kernel σ not given",
        "kernel σ 1.0, target σ 1.5 (heatmap pixels)",
        "the kernel must be narrower than the target for H0 = M ∗ K to match it",
    ),
    ("fp32", "bf16 autocast on CPU", "2.7× faster per training step; bf16 inference moved val NME by 0.0005 points"),
)


def pts_count(report: dict[str, Any]) -> str:
    return str(report["label_sets"]["pts"]["faces"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="training output_dir (holds best.pt)")
    parser.add_argument("--weights-dir", type=Path, default=Path("model/weights"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/aflw2000-3d"))
    args = parser.parse_args()
    w = args.weights_dir
    w.mkdir(parents=True, exist_ok=True)
    ckpt = w / CHECKPOINT
    python(
        "training.calibrate", "--checkpoint", str(args.run / "best.pt"), "--out", str(ckpt), "--data", str(args.data)
    )
    common = ["--checkpoint", str(ckpt), "--data", str(args.data), "--split", "val"]
    python("training.evaluate", *common, "--out", str(w / "report"))
    python("training.evaluate", *common, "--labels", "pts", "--boxes", "detector", "--out", str(w / "report_detector"))
    python(
        "training.evaluate",
        *common,
        "--labels",
        "pts",
        "--boxes",
        "detector",
        "--second-pass",
        "--out",
        str(w / "report_detector_second_pass"),
    )
    for name in ("config.yaml", "log.jsonl"):
        shutil.copy(args.run / name, w / name)
    notes = args.run / "NOTES.md"
    (w / "README.md").write_text(card(w, notes.read_text() if notes.is_file() else ""))
    print(f"wrote {w}")


if __name__ == "__main__":
    main()

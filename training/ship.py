"""Package a trained run as the checkpoint the service ships, with its reports and model card.

    python -m training.ship --run runs/multi_cpu [--weights-dir model/weights]

Steps, all in this process: fit each annotation convention on the train splits (``training.conventions``, its val
table in ``conventions.json``); calibrate the confidence on both val splits (``training.calibrate``, cross-fitted
report) into ``dsc_landmarks_cpu.pt``; fit the head-pose model to its predictions (``training.fit_head``);
evaluate it on each val and test split (:data:`SETS`) with ground-truth boxes and with the service's detector
(YuNet), with and without the second pass, in the served (default) convention and, for a set whose own
convention differs (AFLW2000-3D), in its own too; copy the resolved training config and the per-epoch log; write
``README.md`` (the model card) from those files, so every number in it comes from a committed report. A
``NOTES.md`` in the run folder (what happened during the run that its log alone does not say) is copied into
the card.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.checkpoint import load_checkpoint, save_checkpoint
from model.pipeline import PipelineOptions
from training import calibrate, conventions, evaluate, fit_head

CHECKPOINT = "dsc_landmarks_cpu.pt"
HEAD_MODEL = "head_model.npz"


@dataclass(frozen=True)
class EvalSet:
    """A val split the card reports: its report folder prefix, how to read it, its headline normalisation."""

    key: str
    title: str
    format: str
    root: Path
    labels: str | None
    norm: str
    convention: str | None = None  # its annotation convention where it is not the served default


SETS = (
    EvalSet("aflw2000", "AFLW2000-3D val", "aflw2000", Path("../shared/data/aflw2000-3d"), "pts", "box", "aflw2000"),
    EvalSet("300w", "300-W subset val", "pts_folder", Path("../shared/data/300w-subset"), None, "inter_ocular"),
)
OWN = "_own_convention"  # report folder suffix: the set evaluated in its own annotation convention
NORM_NAMES = {"box": "box", "inter_ocular": "inter-ocular", "inter_pupil": "inter-pupil"}


def block(report: dict[str, Any], labels: str | None = None) -> dict[str, Any]:
    res = report["label_sets"][labels or next(iter(report["label_sets"]))]
    return next(v for v in res.values() if evaluate.is_subset_block(v))


def label_set(report: dict[str, Any], labels: str | None = None) -> dict[str, Any]:
    return report["label_sets"][labels or next(iter(report["label_sets"]))]


def read(weights: Path, folder: str) -> dict[str, Any]:
    return json.loads((weights / folder / "report.json").read_text())


SPLITS = {"val": "", "test": "_test"}  # split: report folder suffix


def folder(spec: EvalSet, split: str, kind: str = "") -> str:
    """``report_<key>[_test][_detector[_second_pass]]``."""
    return f"report_{spec.key}{SPLITS[split]}{kind}"


def accuracy_rows(weights: Path, split: str = "val") -> list[str]:
    rows = []
    for spec in SETS:
        gt = read(weights, folder(spec, split))
        for labels in gt["label_sets"]:
            b = block(gt, labels)
            for norm in ("box", "inter_ocular", "inter_pupil"):
                for stage in ("stage2", "stage1"):
                    s = b[norm][stage]
                    title = spec.title.replace(" val", f" {split}")
                    name = title + ("" if labels == "default" else f" ({labels})")
                    rows.append(
                        f"| {name} | {NORM_NAMES[norm]} | {stage} | {s['nme_mean']:.2f} | {s['nme_median']:.2f} | "
                        f"{s['auc_0.07']:.1f} | {s['failure_0.07']:.1f} | {s['failure_0.10']:.1f} |"
                    )
    return rows


def detector_rows(weights: Path, split: str = "val") -> list[str]:
    rows = []
    for spec in SETS:
        one, two = (
            read(weights, folder(spec, split, "_detector")),
            read(weights, folder(spec, split, "_detector_second_pass")),
        )
        res = label_set(one, spec.labels)
        ref = res["gt_boxes_same_faces"][spec.norm]["nme_mean"]
        d1, d2 = block(one, spec.labels)[spec.norm]["stage2"], block(two, spec.labels)[spec.norm]["stage2"]
        title = spec.title.replace(" val", f" {split}")
        rows.append(
            f"| {title} | {NORM_NAMES[spec.norm]} | {100 * res['detector_recall']:.1f} % "
            f"({res['faces']}/{res['samples']}) | {ref:.2f} | {d1['nme_mean']:.2f} | **{d2['nme_mean']:.2f}** |"
        )
        if spec.convention:  # the service's path in the set's own convention (GT boxes on the same faces beside)
            own = read(weights, folder(spec, split, "_detector_second_pass" + OWN))
            same = label_set(own, spec.labels)["gt_boxes_same_faces"][spec.norm]["nme_mean"]
            d2 = block(own, spec.labels)[spec.norm]["stage2"]
            rows.append(f"| {title}, `{spec.convention}` convention | {NORM_NAMES[spec.norm]} | | {same:.2f} | | "
                        f"**{d2['nme_mean']:.2f}** |")  # fmt: skip
    return rows


def confidence_rows(cal: dict[str, Any]) -> list[str]:
    return [
        f"| {name} | {b['faces']} | {b['spearman_raw']:.3f} | {b['ece_raw']:.3f} | {b['ece_cross_fitted']:.3f} |"
        for name, b in cal["per_set"].items()
    ]


def headline(weights: Path, split: str) -> list[str]:
    """One bullet per set: the headline NME of its split with ground-truth boxes, as served (the default
    convention) and, for a set with its own convention, in that one."""
    lines = []
    for spec in SETS:
        report = read(weights, folder(spec, split))
        b = block(report, spec.labels)[spec.norm]["stage2"]
        title = spec.title.replace(" val", f" {split}")
        own = ""
        if spec.convention:
            o = block(read(weights, folder(spec, split, OWN)), spec.labels)[spec.norm]["stage2"]
            own = f" In its own annotation convention (`{spec.convention}`): **{o['nme_mean']:.2f} %**."
        lines.append(
            f"- **{title}** ({label_set(report, spec.labels)['faces']} faces): {NORM_NAMES[spec.norm]} NME "
            f"**{b['nme_mean']:.2f} %** (median {b['nme_median']:.2f} %, AUC@0.07 {b['auc_0.07']:.1f} %).{own} "
            f"Full report: `{folder(spec, split)}/`."
        )
    return lines


def convention_choices(weights: Path) -> str:
    """What was chosen on val for each convention: the offsets alone, or the linear part at which ridge."""
    path = weights / "conventions.json"
    body = json.loads(path.read_text()) if path.is_file() else {}
    text = "; ".join(f"`{name}`: {choice['chosen']}" for name, choice in body.get("choices", {}).items())
    gate = body.get("gate")
    if gate:
        text += (f"; the default's regression serves the shapes within {gate['percentile']:g} % of its training faces "
                 f"and falls back to `{gate['fallback']}` beyond them")  # fmt: skip
    return text or "offsets alone"


def convention_rows(weights: Path) -> list[str]:
    """The val table of ``conventions.json``: NME with no convention, the set's own and the served default."""
    path = weights / "conventions.json"
    if not path.is_file():
        return []
    val = json.loads(path.read_text())["val"]
    norms = {spec.root.name: spec.norm for spec in SETS}
    rows = []
    for name, row in val.items():
        norm = norms.get(name.split("/")[0], "box")
        cells = " | ".join(f"{row[k][norm]:.3f}" for k in ("none", "own", "default"))
        rows.append(f"| {name} | {row['convention']} | {NORM_NAMES[norm]} | {cells} |")
    return rows


@dataclass(frozen=True)
class CardText:
    """What the reports cannot say: what the model is (``about``), how it was trained (``reproduce``, shell lines)
    and the run's history (``notes``). From ABOUT.md, REPRODUCE.sh and NOTES.md in the run folder, or, when
    re-measuring a shipped model, from its current card (:func:`text_of_card`)."""

    about: str = ""
    reproduce: str = ""
    notes: str = ""


def text_of_card(card_text: str) -> CardText:
    """The hand-written parts of an existing card, to regenerate it around new reports."""
    about = card_text.split("\n", 1)[1].split("\nBest epoch", 1)[0]
    bash = card_text.split("## Reproduce", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    reproduce = "\n".join(line for line in bash.splitlines() if "training.ship" not in line)
    notes = card_text.split("## Notes on this run", 1)[1] if "## Notes on this run" in card_text else ""
    return CardText(about.strip(), reproduce.strip(), notes.strip())


def test_spearman(weights: Path) -> str:
    """Spearman(confidence, error) on each test split, with ground-truth boxes and on the service's path."""
    values = []
    for spec in SETS:
        truth = label_set(read(weights, folder(spec, "test")), spec.labels)["confidence_spearman"]
        served = label_set(read(weights, folder(spec, "test", "_detector_second_pass")), spec.labels)
        values.append(
            f"{spec.title.replace(' val', ' test')} {truth:.3f} (YuNet + second pass: "
            f"{served['confidence_spearman']:.3f})"
        )
    return ", ".join(values)


PUBLISHED_POSE = (  # mean absolute error (degrees) on all of AFLW2000-3D, HopeNet's protocol, trained on 300W-LP
    ("dlib 68 points + PnP (HopeNet paper)", 15.8),
    ("FAN 12 points + PnP (HopeNet paper)", 9.1),
    ("3DDFA", 7.4),
    ("HopeNet", 6.2),
    ("FSA-Net", 5.1),
    ("6DRepNet", 4.0),
)


def pose_rows(weights: Path) -> list[str]:
    """Head pose MAE on AFLW2000-3D test and val, ground-truth boxes and the service's path, then the published
    models' (cross-dataset) numbers."""
    rows = []
    for split in ("test", "val"):
        for kind, path in (("ground-truth boxes", ""), ("YuNet + second pass", "_detector_second_pass")):
            pose = label_set(read(weights, f"report_aflw2000{SPLITS[split]}{path}"), "pts").get("pose", {})
            if "mae" not in pose:
                continue
            m, bins = pose["mae"], pose["yaw_bins"]
            rows.append(
                f"| ours, AFLW2000-3D {split} split, {kind} | {pose['faces']} ({pose['refused']} refused) | "
                f"{m['yaw']:.2f} | {m['pitch']:.2f} | {m['roll']:.2f} | **{m['mean']:.2f}** | "
                + " | ".join(f"{bins[k]:.2f}" for k in ("[0,30)", "[30,60)", "[60,90]"))
                + " |"
            )
    rows += [f"| {name}, all of AFLW2000-3D (cross-dataset) | 1,969 | | | | {mae:.1f} | | | |" for name, mae in
             PUBLISHED_POSE]  # fmt: skip
    return rows


def card(weights: Path, text: CardText, version: str | None = None) -> str:
    """The model card: every number from the committed reports in ``weights``, the prose from ``text``."""
    about, run_notes = text.about, text.notes
    cal = json.loads((weights / "calibration.json").read_text())
    log = [json.loads(line) for line in (weights / "log.jsonl").read_text().splitlines()]
    best = min(log, key=lambda r: r.get("val_select", float("inf")))
    aflw = read(weights, "report_aflw2000_test")
    yaw = aflw["label_sets"]["pts"]["yaw_bins_box"]
    keys = [k for k in yaw["stage2"] if not k.endswith("_count")]
    stages = {"stage2": yaw["stage2"], "stage1": yaw["stage1"]}
    own = weights / "report_aflw2000_test_own_convention" / "report.json"
    if own.is_file():  # the same faces in AFLW2000-3D's own annotation convention
        stages = {"stage2": yaw["stage2"], "stage2, `aflw2000` convention": read(weights, own.parent.name)[
            "label_sets"]["pts"]["yaw_bins_box"]["stage2"], "stage1": yaw["stage1"]}  # fmt: skip
    yaw_rows = [f"| {stage} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |" for stage, row in stages.items()]
    counts = " | ".join(f"{yaw['stage2'][k + '_count']:.0f}" for k in keys[:-1])
    notes = f"\n## Notes on this run\n\n{run_notes.strip()}\n" if run_notes.strip() else ""
    header = "| set | normalisation | stage | NME mean % | NME median % | AUC@0.07 % | fail@0.07 % | fail@0.10 % |"
    served = PipelineOptions().passes
    detector_header = f"| set | normalisation | found | GT boxes % | detector, 1 pass % | detector, {served} passes % |"
    return f"""# Shipped model: `{CHECKPOINT}`

{about.strip()}

Best epoch {best["epoch"] + 1} of {len(log)} logged in the last stage (config: `config.yaml`, per-epoch log:
`log.jsonl`; the run's history is in *Notes on this run* below). Protocol: trained on the `train` splits,
everything chosen on `val`, reported on `test` (README, *The protocol*).

## Accuracy on the test splits (boxes from the ground-truth landmarks)

{chr(10).join(headline(weights, "test"))}

{header}
|---|---|---|---|---|---|---|---|
{chr(10).join(accuracy_rows(weights, "test"))}

`pts` = the 2D re-annotation the model was trained on; `mat` = the original `pt3d_68` (jaw points on the 3D
surface rather than the visible contour, so larger errors there). Stage 1 = H0 (FC-DenseNet + kernel conv),
stage 2 = H_f (after the dilated skip convolution refiner). Inter-ocular normalisation blows up on large-yaw
faces, whose eye corners nearly coincide in the image; that is why AFLW2000-3D results use the box.

AFLW2000-3D test box NME (%) by absolute yaw (3DDFA protocol, `pts` labels):

| stage | {" | ".join(keys)} |
|---{"|---" * len(keys)}|
{chr(10).join(yaw_rows)}
| faces | {counts} | {aflw["label_sets"]["pts"]["faces"]} |

These numbers are **not comparable to the paper's** (4.04 % on all of AFLW2000-3D, 3.11 % on the full HELEN test
set): the paper trains on 61k 300W-LP images at 256² with heatmaps at full resolution; this model trains on a few
thousand images at 128² with 32² heatmaps, and the 300-W faces here are held-out HELEN and LFPW *train* faces.

## Annotation conventions

The network learns the average of its training sets' annotation conventions; each convention's residual,
fitted on its train split (`python -m training.conventions`, `conventions.json`) as a mean offset per point plus,
where it serves val better, a ridge regression on the face's predicted shape ({convention_choices(weights)}),
is added back to the points it serves: 300-W's by default (`LANDMARKS_CONVENTION`), AFLW2000-3D's on request. NME on
the val splits (ground-truth boxes) with no convention, the set's own, and the served default:

| val set | its convention | normalisation | none % | own % | default (served) % |
|---|---|---|---|---|---|
{chr(10).join(convention_rows(weights))}

## Accuracy on the val splits (where the checkpoint, calibration and settings were chosen)

{chr(10).join(headline(weights, "val"))}

{header}
|---|---|---|---|---|---|---|---|
{chr(10).join(accuracy_rows(weights, "val"))}

## With the service's detector (YuNet)

NME of the faces the detector finds, with ground-truth boxes and with the detector's boxes (one pass, and the
service's default {served}, each after the first re-framed from the previous pass's landmarks; `report_*_detector*/`):

{detector_header}
|---|---|---|---|---|---|
{chr(10).join(detector_rows(weights, "test") + detector_rows(weights, "val"))}

## Head pose

Every face's yaw, pitch and roll come from a 3D head (`head_model.npz`, built from AFLW2000-3D train by
`python -m training.fit_head`, its correction chosen on val: `head_model.json`) fitted to the 68 points
(`model/pose.py`). Mean absolute error in degrees, HopeNet's protocol (faces with an angle beyond ±99° left
out), by absolute yaw in the last three columns (mean of the three angles):

| model, data | faces | yaw | pitch | roll | mean | yaw 0-30° | 30-60° | 60-90° |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(pose_rows(weights))}

The published models train on 300W-LP and test on all of AFLW2000-3D (cross-dataset); ours is built from
AFLW2000-3D's own train split and reported on its held-out test split, so the rows are not a like-for-like
comparison.

## Confidence

Per-point confidence is a raw score — the geometric mean of the point's peak heights in H_f and H0 and of the
face's mean over its points (`model.codec.confidence`) — mapped by an isotonic fit (`calibration.json`,
`calibration.png`) to the probability that the point lies within {100 * cal["tolerance"]:.0f} % of the face size
of the truth. The shipped map is fitted on both val sets; the calibration error below is **cross-fitted**
({cal["folds"]} folds by face: each face's confidences come from a map fitted without it), so it is not measured
on the data it was fitted on. On the test splits, Spearman(confidence, error) with ground-truth boxes:
{test_spearman(weights)}.

| val set | faces | Spearman(confidence, error) | ECE raw score | ECE calibrated (cross-fitted) |
|---|---|---|---|---|
{chr(10).join(confidence_rows(cal))}

## Reproduce

```bash
{text.reproduce.strip()}
.venv/bin/python -m training.ship --run <run>{f" --version {version}" if version else ""}  # this folder
```

Deviations from the paper's recipe (`training/configs/paper_300wlp.yaml` keeps the paper's), and why:

| paper | here | why |
|---|---|---|
{chr(10).join(f"| {a} | {b} | {c} |" for a, b, c in DEVIATIONS)}
{notes}"""


DEVIATIONS = (
    (
        "300W-LP (61k images), 256² input, heatmaps at input resolution",
        "AFLW2000-3D train (1,200) + 300-W subset v2 train (1,606, drawn 1.5x), 128² input, 32² heatmaps",
        "the data available here; a model that serves at 20-80 faces/s on 2 CPU cores",
    ),
    (
        "RMSprop, lr 1e-4 → 1e-5 → 1e-6, 100 epochs",
        "AdamW from scratch, one-cycle schedule (peak lr 1e-3) over 80 epochs, batch 16, both sets at once",
        "measured on val; RMSprop at 1e-4 was not run here",
    ),
    ("rotation ±50°, scale 0.8–1.2", "rotation ±40°, scale 0.85–1.15", "as in the first prototype"),
    (
        "horizontal flip augmentation",
        "flips for the 80 epochs from scratch, none in the fine-tunes that followed",
        "a flip teaches each annotation source's label offset mirrored too (README, *Label offsets and the flip*); "
        "measured on val",
    ),
    (
        "loss on H_f (eq. 9)",
        "eq. 9 on H_f + 0.5 × eq. 9 on H0; in the fine-tune also an L1 on the coordinates decoded from H_f",
        "keeps stage 1 a detector so both stages can be reported; the L1 rewards the served sub-pixel decode "
        "(measured on val)",
    ),
    (
        "one annotation convention (the data set's)",
        "each training set's convention fitted on its train split and added to the points; 300-W's served",
        "two data sets' annotators disagree consistently; the network alone lands on their average (measured on val)",
    ),
    (
        "kernel σ not given",
        "kernel σ 1.0, target σ 1.5 (heatmap pixels)",
        "the kernel must be narrower than the target for H0 = M ∗ K to match it",
    ),
)


def evaluate_all(ckpt: Path, weights: Path) -> None:
    """Every report the card quotes: each set's val split (where everything was chosen) and test split (where
    nothing was), with ground-truth boxes and with the service's detector, one pass and the service's default
    passes (``_detector_second_pass``, named when the default was a second pass)."""
    served_passes = ["--passes", str(PipelineOptions().passes)]
    for spec in SETS:
        for split in SPLITS:
            base = ["--checkpoint", str(ckpt), "--format", spec.format, "--data", str(spec.root), "--split", split]
            labels = ["--labels", spec.labels] if spec.labels else []
            runs = {
                folder(spec, split): [],
                folder(spec, split, "_detector"): [*labels, "--boxes", "detector"],
                folder(spec, split, "_detector_second_pass"): [*labels, "--boxes", "detector", *served_passes],
            }
            if spec.convention:
                own = ["--convention", spec.convention]
                runs[folder(spec, split, OWN)] = own
                runs[folder(spec, split, "_detector_second_pass" + OWN)] = [
                    *own,
                    *runs[folder(spec, split, "_detector_second_pass")],
                ]
            for name, extra in runs.items():
                head = ["--head-model", str(weights / HEAD_MODEL)]
                evaluate.main(
                    evaluate.get_args_parser().parse_args([*base, *extra, *head, "--out", str(weights / name)])
                )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run", type=Path, help="training output_dir (holds best.pt; ABOUT.md, NOTES.md, REPRODUCE.sh)"
    )
    parser.add_argument("--weights-dir", type=Path, default=Path("model/weights"))
    parser.add_argument("--version", default=None, help="model version to serve under (default: the run's)")
    parser.add_argument(
        "--reports-only",
        action="store_true",
        help="keep the shipped checkpoint and calibration; re-measure every report and rewrite the card around them",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    w = args.weights_dir
    w.mkdir(parents=True, exist_ok=True)
    ckpt = w / CHECKPOINT
    if args.run is None and not args.reports_only:
        raise SystemExit("give --run (a training output_dir) or --reports-only")
    if args.reports_only:
        text = text_of_card((w / "README.md").read_text())
        evaluate_all(ckpt, w)
        version = args.version or load_checkpoint(ckpt)[2].get("version")  # the version it shipped under
        (w / "README.md").write_text(card(w, text, version))
        print(f"re-measured {w}")
        return
    conventions.main(
        conventions.get_args_parser().parse_args(["--checkpoint", str(args.run / "best.pt"), "--out", str(ckpt)])
    )
    # calibrated on what is served: the points in the default convention
    calibrate.main(calibrate.get_args_parser().parse_args(["--checkpoint", str(ckpt), "--out", str(ckpt)]))
    if args.version:
        net, config, metadata = load_checkpoint(ckpt)
        save_checkpoint(ckpt, net, config, {**metadata, "version": args.version})
    # the pose correction is learned on this checkpoint's predicted points (train), chosen on val
    fit_head.main(fit_head.get_args_parser().parse_args(["--checkpoint", str(ckpt), "--out", str(w / HEAD_MODEL)]))
    evaluate_all(ckpt, w)
    for old in w.glob("log*.jsonl"):
        old.unlink()
    for path in (args.run / "config.yaml", *sorted(args.run.glob("log*.jsonl"))):  # earlier stages' logs too
        shutil.copy(path, w / path.name)

    def part(name: str) -> str:
        path = args.run / name
        return path.read_text() if path.is_file() else ""

    text = CardText(part("ABOUT.md"), part("REPRODUCE.sh"), part("NOTES.md"))
    (w / "README.md").write_text(card(w, text, args.version))
    print(f"wrote {w}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

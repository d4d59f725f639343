"""Evaluate a checkpoint: ``python -m training.evaluate --checkpoint CKPT --data ROOT [--format aflw2000]``.

Reports NME (%) with inter-ocular, inter-pupil and box normalisation, CED, AUC@0.07 and failure rates, for
stage 1 (H0) and stage 2 (H_f); the 300-W common / challenging / full subsets or AFLW2000-3D's yaw bins; and the
rank correlation between per-point confidence and error. Writes ``report.json``, ``report.md``, ``ced.png`` and,
with ``--save-examples N``, N pictures of predicted (coloured by confidence) and true (white) points.

Face boxes are the tight boxes of the ground-truth landmarks (``--boxes gt``, the protocol's convention, given to
the pipeline as a caller's boxes) or the service's detector (``--boxes detector``: YuNet, :mod:`model.detector`),
which also reports the detector's recall. Every face runs through :class:`model.pipeline.Pipeline`, as in the
service: its passes (``--passes``, detected faces only) and upright crops (``--align``) are its options.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.detector import DetectorOptions, YuNetDetector, match_detection
from model.engine import Engine, EngineOptions, Landmarks
from model.geometry import as_box, box_from_points
from model.inference import load_for_inference
from model.landmarker import Landmarker
from model.landmarks import GROUPS
from model.pipeline import MAX_PASSES, FaceBox, Pipeline, PipelineOptions, caller_faces
from model.pose import DEFAULT_HEAD_MODEL, HeadModel, PoseFit
from model.render import draw_landmarks
from training.cli import run_cli
from training.datasets import W300_SUBSETS, DataError, Sample, load_image, load_samples
from training.label_offsets import offset_table
from training.metrics import (
    NORMALISERS,
    angle_errors,
    ced,
    hopenet_keeps,
    nme,
    point_errors,
    spearman,
    summarise,
    yaw_table,
)

log = logging.getLogger("training.evaluate")


@dataclass
class Evaluation:
    """Predictions for the faces that had a box, and which samples those were."""

    samples: list[Sample]
    points: np.ndarray  # (N, 68, 2) stage 2
    confidence: np.ndarray  # (N, 68)
    coarse_points: np.ndarray  # (N, 68, 2) stage 1
    found: int
    total: int
    poses: list[PoseFit | None] = field(default_factory=list)  # each face's head pose, with a head model
    reframed: int = 0  # caller boxes the pipeline re-framed with a second pass (their landmarks did not fit them)


def gt_boxes(samples: list[Sample]) -> list[np.ndarray]:
    return [box_from_points(s.points) for s in samples]


def find_faces(
    samples: list[Sample], boxes: str, detector_options: DetectorOptions | None = None
) -> tuple[list[Sample], list[FaceBox]]:
    """Each sample's face as the pipeline gets it: its ground-truth tight box as a caller's box (``gt``), or the
    service's detector (YuNet with the pipeline's detector settings) with the detection whose centre lies in the
    ground-truth box (``detector``; a sample without one is not found)."""
    if boxes == "gt":
        return samples, caller_faces([as_box(b) for b in gt_boxes(samples)])
    detector = YuNetDetector.from_options(detector_options or DetectorOptions())
    kept, faces = [], []
    for s in tqdm(samples, desc="detect", disable=not sys.stderr.isatty(), dynamic_ncols=True):
        det = match_detection(detector(load_image(s.image)), gt_boxes([s])[0])
        if det is not None:
            kept.append(s)
            faces.append(FaceBox(det.box, "detector", det.score, det.roll))
    return kept, faces


def run(
    engine: Engine,
    samples: list[Sample],
    boxes: str,
    options: PipelineOptions | None = None,
    head: HeadModel | None = None,
    batch_size: int = 32,
    found: tuple[list[Sample], list[FaceBox]] | None = None,
    passes: int | None = None,
) -> Evaluation:
    """Predict every sample's face through :class:`model.Landmarker` (the service's pipeline), as the service
    does: ``boxes`` ``gt`` or ``detector``; the options' passes (detected faces only), alignment and detector
    settings apply as they do in service (default: the service's options); with ``head``, each face's head pose
    too; ``batch_size`` faces a call. ``found``: :func:`find_faces`'s answer from an earlier call (the detector
    run once for several evaluations of the same samples). ``passes``: per face, caller boxes included, as a
    request's ``passes`` field (default: the pipeline's, :meth:`model.pipeline.Pipeline.passes_for`)."""
    options = options or PipelineOptions()
    chosen, faces = found or find_faces(samples, boxes, options.detector)
    if not chosen:
        raise DataError("no face to evaluate (the detector found none)")
    landmarker = Landmarker(engine, Pipeline(options, engine.config.input_size, head=head), batch_size)
    results: list[Landmarks] = []
    poses: list[PoseFit | None] = []
    reframed = 0
    step = 64  # photos in memory at once
    bar = tqdm(total=len(chosen), desc="evaluate", disable=not sys.stderr.isatty(), dynamic_ncols=True)
    for start in range(0, len(chosen), step):
        part = zip(chosen[start : start + step], faces[start : start + step], strict=True)
        photos = [(load_image(s.image), [f]) for s, f in part]
        for (_, [given]), photo in zip(photos, landmarker.run(photos, with_coarse=True, passes=passes), strict=True):
            results.append(photo.faces[0].landmarks)
            poses.append(photo.faces[0].pose)
            reframed += given.source == "caller" and photo.faces[0].box != given.box
        bar.update(len(photos))
    bar.close()
    return Evaluation(
        chosen,
        np.stack([r.points for r in results]),
        np.stack([r.confidence for r in results]),
        np.stack([r.coarse_points for r in results if r.coarse_points is not None]),
        len(chosen),
        len(samples),
        poses,
        reframed,
    )


def pose_report(ev: Evaluation) -> dict[str, Any] | None:
    """Head pose MAE (degrees) against the samples' ground-truth poses, HopeNet's protocol (faces with an angle
    beyond ±99° left out): yaw, pitch, roll, their mean, by yaw bin; faces refused; Spearman(confidence, error)."""
    if not ev.poses or any(s.pose is None for s in ev.samples):
        return None
    keep = [i for i, s in enumerate(ev.samples) if hopenet_keeps(s.pose)]
    fits = [(i, ev.poses[i]) for i in keep]
    done = [(i, f.pose) for i, f in fits if f is not None and f.pose is not None]
    out: dict[str, Any] = {
        "protocol": "HopeNet: faces with an angle beyond 99 degrees left out",
        "faces": len(keep),
        "refused": len(keep) - len(done),
    }
    if not done:
        return out
    truth = np.array([ev.samples[i].pose for i, _ in done])
    got = np.array([[p.yaw, p.pitch, p.roll] for _, p in done])
    errors = angle_errors(got, truth)
    mae = errors.mean(axis=0)
    out["mae"] = {"yaw": float(mae[0]), "pitch": float(mae[1]), "roll": float(mae[2]), "mean": float(mae.mean())}
    out["yaw_bins"] = yaw_table(errors.mean(axis=1), np.abs(truth[:, 0]), unit=1.0)
    confidence = np.array([p.confidence for _, p in done])
    out["confidence_spearman"] = spearman(confidence[None, :], errors.mean(axis=1)[None, :])
    return out


def subsets_of(samples: list[Sample], fmt: str) -> dict[str, np.ndarray]:
    """Masks of the protocol's subsets: 300-W common / challenging / full, else everything."""
    names = np.array([s.subset for s in samples])
    if fmt == "300w" and set(names) <= set(W300_SUBSETS["full"]):
        return {k: np.isin(names, W300_SUBSETS[k]) for k in ("common", "challenging", "full")}
    return {"all": np.ones(len(samples), bool)}


def report(ev: Evaluation, gt: np.ndarray, fmt: str) -> dict[str, Any]:
    """All numbers of one label set."""
    out: dict[str, Any] = {"faces": ev.found, "samples": ev.total, "detector_recall": ev.found / ev.total}
    for subset, mask in subsets_of(ev.samples, fmt).items():
        if not mask.any():
            continue
        block: dict[str, Any] = {}
        for norm_name, fn in NORMALISERS.items():
            norm = fn(gt[mask])
            block[norm_name] = {
                "stage2": summarise(nme(ev.points[mask], gt[mask], norm)),
                "stage1": summarise(nme(ev.coarse_points[mask], gt[mask], norm)),
            }
        out[subset] = block
    box = NORMALISERS["box"](gt)
    yaws = np.array([s.yaw if s.yaw is not None else np.nan for s in ev.samples])
    if np.isfinite(yaws).all():
        out["yaw_bins_box"] = {
            "stage2": yaw_table(nme(ev.points, gt, box), yaws),
            "stage1": yaw_table(nme(ev.coarse_points, gt, box), yaws),
        }
    errors = point_errors(ev.points, gt) / box[:, None]
    out["confidence_spearman"] = spearman(ev.confidence, errors)
    out["landmark_groups"] = group_table(ev.points, gt)
    sources = [s.source for s in ev.samples]
    out["offsets"] = {norm: offset_table(ev.points, gt, sources, norm) for norm in ("box", "inter_ocular")}
    pose = pose_report(ev)
    if pose is not None:
        out["pose"] = pose
    return out


REGIONS = {  # the per-group table: where the error is (jaw 17, brows 10, nose 9, eyes 12, mouth 20 points)
    "jaw": GROUPS["jaw"],
    "brows": GROUPS["right_brow"] + GROUPS["left_brow"],
    "nose": GROUPS["nose"],
    "eyes": GROUPS["right_eye"] + GROUPS["left_eye"],
    "mouth": GROUPS["mouth"],
}


def group_table(points: np.ndarray, gt: np.ndarray) -> dict[str, dict[str, float]]:
    """Stage 2's mean NME (%) of each landmark group, for the box and inter-ocular normalisations."""
    errors = point_errors(points, gt)
    return {
        norm: {
            name: 100 * float((errors[:, list(idx)].mean(1) / NORMALISERS[norm](gt)).mean())
            for name, idx in REGIONS.items()
        }
        for norm in ("box", "inter_ocular")
    }


def is_subset_block(value: object) -> bool:
    """A report entry holding NMEs by normalisation and stage (not the yaw table or the detector's reference)."""
    return isinstance(value, dict) and "stage2" in value.get("box", {})


def passes_of(results: dict[str, Any]) -> int:
    """A report's passes per detected face (reports before ``passes`` recorded only ``second_pass``)."""
    return int(results.get("passes", 2 if results["second_pass"] else 1))


def caller_passes(results: dict[str, Any]) -> str:
    """How a report's caller (ground-truth) boxes were run, for its header."""
    if "caller_reframe_iou" not in results:  # reports before caller boxes could be re-framed
        return "caller boxes: one pass"
    return (
        f"caller boxes: one pass, a second where a box's IoU with its first pass's landmark box was under "
        f"{results['caller_reframe_iou']}"
    )


def write_markdown(path: Path, results: dict[str, Any], header: str) -> None:
    lines = [f"# {header}", ""]
    if "batch_size" in results:  # where evaluation runs the engine unlike the service's defaults, it says so
        lines += [
            f"Engine: {results['resolved_precision']} (asked: {results['precision']}; the service's default is "
            f"auto), batches of {results['batch_size']} (service: 16), eager (service: CUDA graphs on CUDA), flip "
            f"test {'on' if results['flip_test'] else 'off'}; annotation convention "
            f"{results.get('convention', 'none')}; {passes_of(results)} network pass(es) per detected face; "
            f"{caller_passes(results)}; align {'on' if results['aligned'] else 'off'}.",
            "",
        ]
    for label, res in results["label_sets"].items():
        lines += [
            f"## Labels: {label}",
            "",
            f"Faces evaluated: {res['faces']} of {res['samples']} "
            f"(detector recall {100 * res['detector_recall']:.1f} %). "
            f"Spearman(confidence, error) = {res['confidence_spearman']:.3f}."
            + (f" Caller boxes re-framed: {res['caller_boxes_reframed']}." if res.get("caller_boxes_reframed") else ""),
            "",
        ]
        lines += [
            "| subset | normalisation | stage | NME mean % | NME median % | AUC@0.07 % | fail@0.07 % | fail@0.10 % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for subset, block in res.items():
            if not is_subset_block(block):
                continue
            for norm, stages in block.items():
                for stage in ("stage1", "stage2"):
                    s = stages[stage]
                    lines.append(
                        f"| {subset} | {norm} | {stage} | {s['nme_mean']:.2f} | {s['nme_median']:.2f} | "
                        f"{s['auc_0.07']:.2f} | {s['failure_0.07']:.2f} | {s['failure_0.10']:.2f} |"
                    )
        if "gt_boxes_same_faces" in res:
            ref = res["gt_boxes_same_faces"]
            lines += [
                "",
                "The same faces with ground-truth boxes (stage 2, NME mean %): "
                + ", ".join(f"{norm} {v['nme_mean']:.2f}" for norm, v in ref.items())
                + ".",
            ]
        if "landmark_groups" in res:
            groups = res["landmark_groups"]
            lines += ["", "Stage 2 NME (%) by landmark group:", "", "| normalisation | " + " | ".join(REGIONS) + " |"]
            lines.append("|---" * (len(REGIONS) + 1) + "|")
            for norm, row in groups.items():
                lines.append(f"| {norm} | " + " | ".join(f"{row[g]:.2f}" for g in REGIONS) + " |")
        if "offsets" in res:
            lines += ["", "Mean offset of the predictions (prediction - label) by annotation source:", ""]
            lines += ["| source | faces | x % box | y % box | x % inter-ocular | y % inter-ocular | x px | y px |"]
            lines.append("|---|---|---|---|---|---|---|---|")
            for source, box in res["offsets"]["box"].items():
                io = res["offsets"]["inter_ocular"][source]
                lines.append(
                    f"| {source} | {box['faces']} | {box['x_pct']:+.2f} | {box['y_pct']:+.2f} | {io['x_pct']:+.2f} | "
                    f"{io['y_pct']:+.2f} | {box['x_px']:+.2f} | {box['y_px']:+.2f} |"
                )
        if "mae" in res.get("pose", {}):
            pose = res["pose"]
            mae, bins = pose["mae"], pose["yaw_bins"]
            keys = [k for k in bins if not k.endswith("_count")]
            lines += [
                "",
                f"Head pose, mean absolute error in degrees ({pose['protocol']}; {pose['faces']} faces, "
                f"{pose['refused']} refused; Spearman(pose confidence, error) = {pose['confidence_spearman']:.3f}):",
                "",
                "| yaw | pitch | roll | mean | " + " | ".join(f"mean, yaw {k}" for k in keys) + " |",
                "|---" * (4 + len(keys)) + "|",
                f"| {mae['yaw']:.2f} | {mae['pitch']:.2f} | {mae['roll']:.2f} | {mae['mean']:.2f} | "
                + " | ".join(f"{bins[k]:.2f}" for k in keys)
                + " |",
            ]
        if "yaw_bins_box" in res:
            keys = [k for k in res["yaw_bins_box"]["stage2"] if not k.endswith("_count")]
            lines += [
                "",
                "Box-normalised NME (%) by absolute yaw (3DDFA protocol):",
                "",
                "| stage | " + " | ".join(keys) + " |",
                "|---" * (len(keys) + 1) + "|",
            ]
            for stage in ("stage1", "stage2"):
                row = res["yaw_bins_box"][stage]
                lines.append(f"| {stage} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
            counts = res["yaw_bins_box"]["stage2"]
            lines.append(
                "| faces | "
                + " | ".join(f"{counts.get(k + '_count', float('nan')):.0f}" for k in keys[:-1])
                + f" | {res['faces']} |"
            )
        lines.append("")
    path.write_text("\n".join(lines))


def plot_ced(path: Path, curves: dict[str, np.ndarray], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for label, errors in curves.items():
        x, y = ced(errors, 0.1)
        ax.plot(100 * x, 100 * y, label=f"{label} (mean {100 * errors.mean():.2f} %)")
    ax.axvline(7, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="NME (%, box normalisation)", ylabel="faces (%)", title=title, xlim=(0, 10), ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_examples(out_dir: Path, ev: Evaluation, gt: np.ndarray, count: int) -> None:
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    errors = nme(ev.points, gt, NORMALISERS["box"](gt))
    order = np.argsort(errors)
    picks = np.unique(order[np.linspace(0, len(order) - 1, min(count, len(order))).astype(int)])
    for i in picks:
        image = draw_landmarks(load_image(ev.samples[i].image), ev.points[i], ev.confidence[i], truth=gt[i])
        name = f"{ev.samples[i].name}_nme{100 * errors[i]:.1f}.png"
        cv2.imwrite(str(out_dir / name), image[:, :, ::-1])


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="data set root")
    p.add_argument("--format", default="aflw2000", choices=["aflw2000", "300w", "300w_lp", "pts_folder"])
    p.add_argument("--split", default=None, help="aflw2000: split file (val); 300w: full | common | challenging")
    p.add_argument("--labels", default=None, help="aflw2000: pts, mat or both (default both)")
    p.add_argument("--boxes", default="gt", choices=["gt", "detector"])
    p.add_argument("--out", type=Path, default=Path("runs/eval"))
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--save-examples", type=int, default=0, metavar="N")
    p.add_argument("--flip-test", action="store_true", help="average with the mirrored crop (2x compute)")
    p.add_argument(
        "--convention",
        default="default",
        help="annotation convention of the points: default (the checkpoint's, as served), none, or a stored name",
    )
    p.add_argument(
        "--passes",
        type=int,
        choices=range(1, MAX_PASSES + 1),
        default=1,
        help="network passes per detected face (the service's LANDMARKS_PASSES, default 2 there): each after the "
        "first re-crops the face from the last pass's landmarks",
    )
    p.add_argument("--second-pass", dest="passes", action="store_const", const=2, help="the same as --passes 2")
    p.add_argument(
        "--align", action="store_true", help="rotate crops upright (detector: YuNet's eyes; later passes: 68 pts)"
    )
    p.add_argument(
        "--head-model",
        type=Path,
        default=DEFAULT_HEAD_MODEL,
        help="3D head model for head pose (reported where the data has poses); 'none' for no pose",
    )
    return p


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """The engine these flags describe. Unlike the service's defaults: fp32 unless ``--precision`` says otherwise,
    batches of ``--batch-size`` (32), eager (no CUDA graphs); the report header records each."""
    return EngineOptions(
        weights=args.checkpoint, device=args.device, precision=args.precision, max_batch_size=args.batch_size,
        cuda_graphs=False, flip_test=args.flip_test, convention=args.convention,
    )  # fmt: skip


def pipeline_options(args: argparse.Namespace) -> PipelineOptions:
    """The pipeline these flags describe (passes and alignment as the service's settings name them)."""
    return PipelineOptions(passes=args.passes, align=args.align)


def main(args: argparse.Namespace) -> dict[str, Any]:
    options = pipeline_options(args)
    engine = load_for_inference(args.checkpoint, engine_options(args))
    head = None if str(args.head_model).lower() == "none" else HeadModel.load(args.head_model)
    label_sets = (
        [args.labels]
        if args.labels not in (None, "both")
        else (["pts", "mat"] if args.format == "aflw2000" else [None])
    )
    results: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "format": args.format,
        "split": args.split,
        "boxes": args.boxes,
        "precision": args.precision,
        "resolved_precision": engine.precision,
        "batch_size": args.batch_size,
        "cuda_graphs": False,
        "flip_test": args.flip_test,
        "convention": engine.convention_name,
        "second_pass": args.passes > 1,
        "passes": args.passes,
        "aligned": args.align,
        "caller_reframe_iou": options.caller_reframe_iou,
        "model": engine.metadata.get("version"),
        "label_sets": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    curves: dict[str, np.ndarray] = {}
    ev: Evaluation | None = None
    for labels in label_sets:
        samples = load_samples(args.format, args.data, args.split, labels)
        if ev is None or args.boxes == "gt":  # GT boxes depend on the label set; detections do not
            ev = run(engine, samples, args.boxes, options, head, args.batch_size)
        names = {s.name: s for s in samples}
        gt = np.stack([names[s.name].points for s in ev.samples])
        key = labels or "default"
        results["label_sets"][key] = report(ev, gt, args.format)
        results["label_sets"][key]["caller_boxes_reframed"] = ev.reframed
        if args.boxes == "detector":  # the same faces with ground-truth boxes, for the detector's cost
            reference = run(engine, [names[s.name] for s in ev.samples], "gt", options, batch_size=args.batch_size)
            results["label_sets"][key]["gt_boxes_same_faces"] = {
                norm: summarise(nme(reference.points, gt, fn(gt))) for norm, fn in NORMALISERS.items()
            }
        box = NORMALISERS["box"](gt)
        curves[f"{key} stage 2"] = nme(ev.points, gt, box)
        curves[f"{key} stage 1"] = nme(ev.coarse_points, gt, box)
        if args.save_examples and key == (label_sets[0] or "default"):
            save_examples(args.out / "examples", ev, gt, args.save_examples)
    title = f"{args.data.name} {args.split or ''} ({args.boxes} boxes)"
    (args.out / "report.json").write_text(json.dumps(results, indent=2))
    write_markdown(args.out / "report.md", results, f"Evaluation of {args.checkpoint.name} on {title}")
    plot_ced(args.out / "ced.png", curves, title)
    log.info("wrote %s", args.out)
    return results


def cli() -> None:
    results = run_cli(main, get_args_parser())
    for label, res in results["label_sets"].items():
        block = next(v for v in res.values() if is_subset_block(v))
        print(
            f"{label}: box NME stage2 {block['box']['stage2']['nme_mean']:.2f} % "
            f"(stage1 {block['box']['stage1']['nme_mean']:.2f} %), faces {res['faces']}/{res['samples']}"
        )


if __name__ == "__main__":
    cli()

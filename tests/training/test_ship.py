import json

from training.ship import CardText, card, text_of_card


def report(nme: float, count: int = 200, recall: float = 1.0) -> dict:
    stage = {
        "count": float(count),
        "nme_mean": nme,
        "nme_median": nme - 1,
        "auc_0.07": 40.0,
        "failure_0.07": 10.0,
        "failure_0.08": 8.0,
        "failure_0.10": 5.0,
    }
    block = {
        norm: {"stage1": {**stage, "nme_mean": 2 * nme}, "stage2": stage}
        for norm in ("box", "inter_ocular", "inter_pupil")
    }
    yaw = {
        "[0,30)": 3.0,
        "[0,30)_count": 120.0,
        "[30,60)": 5.0,
        "[30,60)_count": 50.0,
        "[60,90]": 8.0,
        "[60,90]_count": 30.0,
        "balanced_mean": 16 / 3,
    }
    label = {
        "faces": count,
        "samples": 200,
        "detector_recall": recall,
        "all": block,
        "confidence_spearman": -0.6,
        "yaw_bins_box": {"stage1": yaw, "stage2": yaw},
        "pose": {
            "faces": 190,
            "refused": 1,
            "mae": {"yaw": 3.0, "pitch": 4.0, "roll": 2.0, "mean": 3.0},
            "yaw_bins": {"[0,30)": 2.5, "[30,60)": 3.5, "[60,90]": 5.0},
        },
    }
    return {"label_sets": {"pts": label, "mat": label}}


def detector_report(nme: float, found: int, total: int, labels: str, reference: float) -> dict:
    base = report(nme, found, found / total)["label_sets"]["pts"]
    base = {
        **base,
        "samples": total,
        "gt_boxes_same_faces": {n: {"nme_mean": reference} for n in ("box", "inter_ocular")},
    }
    return {"label_sets": {labels: base}}


def write_reports(folder, scale: float = 1.0) -> None:
    w300 = lambda nme, count: {"label_sets": {"default": report(nme, count)["label_sets"]["pts"]}}  # noqa: E731
    for suffix, k in (("", 1.0), ("_test", scale)):
        for name, content in (
            (f"report_aflw2000{suffix}", report(2.5 * k)),
            (f"report_aflw2000{suffix}_detector", detector_report(2.7 * k, 198, 200, "pts", 2.55 * k)),
            (f"report_aflw2000{suffix}_detector_second_pass", detector_report(2.52 * k, 198, 200, "pts", 2.55 * k)),
            (f"report_aflw2000{suffix}_own_convention", report(2.4 * k)),
            (
                f"report_aflw2000{suffix}_detector_second_pass_own_convention",
                detector_report(2.45 * k, 198, 200, "pts", 2.4 * k),
            ),
            (f"report_300w{suffix}", w300(3.9 * k, 200)),
            (f"report_300w{suffix}_detector", detector_report(4.0 * k, 200, 200, "default", 3.93 * k)),
            (f"report_300w{suffix}_detector_second_pass", detector_report(3.96 * k, 200, 200, "default", 3.93 * k)),
        ):
            (folder / name).mkdir()
            (folder / name / "report.json").write_text(json.dumps(content))
    per_set = {"ece_raw": 0.1, "ece_cross_fitted": 0.01, "spearman_raw": -0.55, "faces": 200}
    (folder / "calibration.json").write_text(
        json.dumps({"tolerance": 0.05, "folds": 5, "per_set": {"aflw2000-3d/val": per_set, "300w-subset/val": per_set}})
    )
    val = {"none": {"box": 2.9, "inter_ocular": 20.0}, "own": {"box": 2.7, "inter_ocular": 19.0}}
    (folder / "conventions.json").write_text(json.dumps({"val": {
        "aflw2000-3d/val": {"convention": "aflw2000", **val, "default": {"box": 3.0, "inter_ocular": 21.0}},
        "300w-subset/val": {"convention": "300w", **val, "default": val["own"]},
    }}))  # fmt: skip
    (folder / "log.jsonl").write_text("\n".join(json.dumps({"epoch": e, "val_select": 10 - e}) for e in range(5)))


def test_model_card_quotes_the_committed_reports_test_first(tmp_path):
    write_reports(tmp_path, scale=2.0)
    about = "The cpu preset. **Licence: research and non-commercial use only.**"
    text = card(tmp_path, CardText(about, ".venv/bin/python -m training.train --config x.yaml"))
    test_part, val_part = text.split("## Accuracy on the val splits")
    assert "**AFLW2000-3D test** (200 faces): box NME **5.00 %**" in test_part
    assert "**300-W subset test** (200 faces): inter-ocular NME **7.80 %**" in test_part
    assert "box NME **2.50 %**" in val_part
    assert "In its own annotation convention (`aflw2000`): **4.80 %**" in test_part
    assert "| aflw2000-3d/val | aflw2000 | box | 2.900 | 2.700 | 3.000 |" in text
    assert "| AFLW2000-3D test, `aflw2000` convention | box | | 4.80 | | **4.90** |" in text
    assert "| 300w-subset/val | 300w | inter-ocular | 20.000 | 19.000 | 19.000 |" in text
    assert "Best epoch 5 of 5" in text
    assert "| AFLW2000-3D test | box | 99.0 % (198/200) | 5.10 | 5.40 | **5.04** |" in text
    assert "| 300-W subset val | inter-ocular | 100.0 % (200/200) | 3.93 | 4.00 | **3.96** |" in text
    assert "| AFLW2000-3D test (pts) | box | stage2 | 5.00 |" in text
    assert "| aflw2000-3d/val | 200 | -0.550 | 0.100 | 0.010 |" in text
    assert "research and non-commercial use only" in text
    assert (
        "| ours, AFLW2000-3D test split, ground-truth boxes | 190 (1 refused) | 3.00 | 4.00 | 2.00 | **3.00** |" in text
    )
    assert "| 6DRepNet, all of AFLW2000-3D (cross-dataset) |" in text
    assert "training.train --config x.yaml" in text
    assert "## Notes on this run" not in text
    noted = card(tmp_path, CardText(about, "", "Resumed at epoch 70.\n"))
    assert noted.endswith("## Notes on this run\n\nResumed at epoch 70.\n")
    assert text_of_card(noted) == CardText(about, "", "Resumed at epoch 70.")  # a card can be regenerated

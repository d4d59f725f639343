import json

from training.ship import card


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


def test_model_card_quotes_the_committed_reports(tmp_path):
    w300 = {"label_sets": {"default": report(3.9, 120)["label_sets"]["pts"]}}
    for folder, content in (
        ("report_aflw2000", report(2.5)),
        ("report_aflw2000_detector", detector_report(2.7, 198, 200, "pts", 2.55)),
        ("report_aflw2000_detector_second_pass", detector_report(2.52, 198, 200, "pts", 2.55)),
        ("report_300w", w300),
        ("report_300w_detector", detector_report(4.0, 120, 120, "default", 3.93)),
        ("report_300w_detector_second_pass", detector_report(3.96, 120, 120, "default", 3.93)),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "report.json").write_text(json.dumps(content))
    per_set = {"ece_raw": 0.1, "ece_cross_fitted": 0.01, "spearman_raw": -0.55, "faces": 200}
    (tmp_path / "calibration.json").write_text(
        json.dumps({"tolerance": 0.05, "folds": 5, "per_set": {"aflw2000-3d/val": per_set, "300w-subset/val": per_set}})
    )
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps({"epoch": e, "val_select": 10 - e}) for e in range(5)))
    text = card(tmp_path)
    assert "box NME **2.50 %**" in text
    assert "inter-ocular NME **3.90 %**" in text
    assert "Best epoch 5 of 5" in text
    assert "| AFLW2000-3D val | box | 99.0 % (198/200) | 2.55 | 2.70 | **2.52** |" in text
    assert "| 300-W subset val (HELEN) | inter-ocular | 100.0 % (120/120) | 3.93 | 4.00 | **3.96** |" in text
    assert "| AFLW2000-3D val (pts) | box | stage2 | 2.50 |" in text
    assert "| aflw2000-3d/val | 200 | -0.550 | 0.100 | 0.010 |" in text
    assert "research and non-commercial use only" in text
    assert "## Notes on this run" not in text
    noted = card(tmp_path, "Resumed at epoch 70.\n")
    assert noted.endswith("## Notes on this run\n\nResumed at epoch 70.\n")

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


def test_model_card_quotes_the_committed_reports(tmp_path):
    for folder, content in (
        ("report", report(4.2)),
        ("report_detector", report(6.5, 156, 0.78)),
        ("report_detector_second_pass", report(6.1, 156, 0.78)),
    ):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "report.json").write_text(json.dumps(content))
    (tmp_path / "calibration.json").write_text(
        json.dumps(
            {
                "tolerance": 0.05,
                "spearman_raw": -0.61,
                "spearman_calibrated": -0.61,
                "ece_raw": 0.06,
                "ece_calibrated": 0.01,
            }
        )
    )
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps({"epoch": e, "val_nme_box": 10 - e}) for e in range(5)))
    text = card(tmp_path)
    assert "**4.20 %**" in text
    assert "Best epoch 5 of 5" in text
    assert "**78.0 %**" in text
    assert "**6.10 %**" in text
    assert "| pts | box | stage2 | 4.20 |" in text
    assert "research and non-commercial use only" in text
    assert "Notes on this run" not in text
    noted = card(tmp_path, "Resumed at epoch 70.\n")
    assert noted.endswith("## Notes on this run\n\nResumed at epoch 70.\n")

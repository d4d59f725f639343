"""Accuracy guarded in CI: the shipped checkpoint, re-evaluated on the real val and test splits, must reproduce every
committed report within 0.05 NME points (and 0.05 degrees of head pose), and the model card must be exactly what its
reports say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model.artifacts import SHIPPED_CHECKPOINT, WEIGHTS
from training import evaluate
from training.ship import card, text_of_card

TOLERANCE = 0.05  # NME points, and degrees of head pose
# The ground-truth-box reports of every split, and the service's path (YuNet + second pass) on the test splits, in
# the served convention and, for AFLW2000-3D, in its own.
GUARDED = sorted(
    p
    for p in WEIGHTS.glob("report_*/report.json")
    if p.parent.name.removesuffix("_own_convention").endswith(
        ("_aflw2000", "_300w", "_test", "_test_detector_second_pass")
    )
)


def nme_means(report: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every ``nme_mean`` in a report, by its path."""
    found: dict[str, float] = {}
    for key, value in report.items():
        if isinstance(value, dict):
            found |= nme_means(value, f"{prefix}/{key}")
        elif key == "nme_mean":
            found[prefix] = float(value)
    return found


def pose_maes(report: dict[str, Any]) -> dict[str, float]:
    """Every head pose MAE (degrees) in a report, by label set and angle."""
    return {
        f"{label}/{angle}": float(value)
        for label, res in report["label_sets"].items()
        for angle, value in res.get("pose", {}).get("mae", {}).items()
    }


def rerun_args(committed: dict[str, Any], out: Path) -> list[str]:
    labels = set(committed["label_sets"])
    # the committed checkpoint, wherever training.ship wrote it before it was copied into model/weights
    args = ["--checkpoint", str(SHIPPED_CHECKPOINT), "--data", committed["data"], "--format", committed["format"]]
    args += ["--split", committed["split"], "--boxes", committed["boxes"], "--precision", committed["precision"]]
    if labels == {"pts", "mat"}:
        args += ["--labels", "both"]
    elif labels != {"default"}:
        args += ["--labels", labels.pop()]
    args += ["--flip-test"] * committed["flip_test"] + ["--passes", str(evaluate.passes_of(committed))]
    args += ["--convention", committed.get("convention", "none")]  # reports before conventions: the network's own
    return [*args, *["--align"] * committed["aligned"], "--out", str(out)]


def test_the_guarded_reports_cover_both_sets_and_both_splits():
    names = {p.parent.name for p in GUARDED}
    for key in ("aflw2000", "300w"):
        assert {f"report_{key}", f"report_{key}_test", f"report_{key}_test_detector_second_pass"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", GUARDED, ids=lambda p: p.parent.name)
def test_a_committed_report_reproduces(path, aflw_dir, w300_dir, tmp_path):
    committed = json.loads(path.read_text())
    fresh = evaluate.main(evaluate.get_args_parser().parse_args(rerun_args(committed, tmp_path)))
    assert fresh["model"] == committed["model"], "the report is of another checkpoint: re-run training.ship"
    before, after = nme_means(committed), nme_means(fresh)
    assert before.keys() == after.keys()
    moved = {k: round(after[k] - before[k], 4) for k in before if abs(after[k] - before[k]) > TOLERANCE}
    assert not moved, f"NME moved by more than {TOLERANCE} points from {path}: {moved}"
    before, after = pose_maes(committed), pose_maes(fresh)
    assert before.keys() == after.keys()
    moved = {k: round(after[k] - before[k], 4) for k in before if abs(after[k] - before[k]) > TOLERANCE}
    assert not moved, f"head pose MAE moved by more than {TOLERANCE} degrees from {path}: {moved}"


def test_the_model_card_is_what_its_reports_say():
    text = (WEIGHTS / "README.md").read_text()
    regenerated = card(WEIGHTS, text_of_card(text), version=None)
    # The Reproduce block's ship line carries the version given at shipping time; everything else must match.
    strip = [line for line in text.splitlines() if "training.ship" not in line]
    assert [line for line in regenerated.splitlines() if "training.ship" not in line] == strip

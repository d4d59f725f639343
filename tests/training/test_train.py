import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from model.engine import EngineOptions
from model.inference import load_for_inference
from tests.conftest import mean_face
from tests.training.fixtures import make_aflw2000, make_pts_split
from training import evaluate, train
from training.config import load_config
from training.datasets import write_pts

TINY = {
    "input_size": 64,
    "stem_channels": 8,
    "growth_rate": 4,
    "layers_per_block": [2, 2, 2, 2, 2],
    "bottleneck_layers": 2,
    "dsc_width": 8,
    "kernel_size": 9,
    "kernel_sigma": 0.8,
    "heatmap_sigma": 1.2,
}


def write_config(tmp_path: Path, **extra: object) -> Path:
    data = make_aflw2000(tmp_path / "data", count=6)
    del data
    config = {
        "model": "cpu",
        "model_overrides": TINY,
        "train": {"format": "aflw2000", "root": str(tmp_path / "data"), "split": "train"},
        "val": {"format": "aflw2000", "root": str(tmp_path / "data"), "split": "val"},
        "optim": {"name": "adamw", "lr": 1e-3, "schedule": "cosine", "warmup_epochs": 1},
        "epochs": 2,
        "batch_size": 2,
        "workers": 0,
        "output_dir": str(tmp_path / "run"),
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_train(config: Path, *extra: str) -> dict:
    return train.main(train.get_args_parser().parse_args(["--config", str(config), *extra]))


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_two_epoch_smoke_run_then_resume(tmp_path):
    config = write_config(tmp_path)
    run_train(config)
    run_dir = tmp_path / "run"
    assert {"config.yaml", "log.jsonl", "last.pt", "last_state.pt", "best.pt"} <= {p.name for p in run_dir.iterdir()}
    log = read_log(run_dir)
    assert [r["epoch"] for r in log] == [0, 1]
    assert all(r["train_loss"] > 0 and "val_aflw2000_nme_box" in r and "val_aflw2000_nme_box_stage1" in r for r in log)
    assert all(r["val_select"] == r["val_aflw2000_nme_box"] for r in log)  # one val set: the criterion is its NME
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["optim"]["lr"] == 1e-3

    run_train(config, "--resume", "--set", "epochs=3")
    assert [r["epoch"] for r in read_log(run_dir)] == [0, 1, 2]
    engine = load_for_inference(run_dir / "best.pt", EngineOptions(device="cpu"))
    assert engine.metadata["training"]["epochs_done"] >= 1
    assert "val_select" in engine.metadata["metrics"]


def test_two_training_sets_each_validated_and_selected_on_the_declared_criterion(tmp_path):
    make_pts_split(tmp_path / "w300", count=5)
    config = write_config(
        tmp_path,
        epochs=1,
        train=[
            {"name": "aflw", "format": "aflw2000", "root": str(tmp_path / "data"), "split": "train", "weight": 1},
            {"name": "w300", "format": "pts_folder", "root": str(tmp_path / "w300"), "split": "train", "weight": 3},
        ],
        val=[
            {"name": "aflw", "format": "aflw2000", "root": str(tmp_path / "data"), "split": "val"},
            {
                "name": "w300",
                "format": "pts_folder",
                "root": str(tmp_path / "w300"),
                "split": "val",
                "norm": "inter_ocular",
            },
        ],
        select={"aflw": 1.0, "w300": 3.0},
        epoch_size=8,
    )
    record = run_train(config)
    expected = (record["val_aflw_nme_box"] + 3 * record["val_w300_nme_inter_ocular"]) / 4
    assert record["val_select"] == pytest.approx(expected)
    assert {"val_aflw_nme_box_stage1", "val_w300_nme_inter_ocular_median"} <= set(record)
    engine = load_for_inference(tmp_path / "run" / "best.pt", EngineOptions(device="cpu"))
    data = engine.metadata["training"]["data"]
    assert [d["name"] for d in data["train"]] == ["aflw", "w300"]
    assert data["select"] == {"aflw": 1.0, "w300": 3.0}
    with pytest.raises(ValueError, match="select names"):
        load_config(config, ["select={nope: 1}"])
    with pytest.raises(ValueError, match="distinct names"):
        load_config(config, ["val=[{format: pts_folder, root: x}, {format: pts_folder, root: y}]"])


def test_resume_without_state_is_a_clear_error(tmp_path):
    config = write_config(tmp_path)
    with pytest.raises(Exception, match="last_state.pt does not exist"):
        run_train(config, "--resume")


def test_config_errors_are_readable(tmp_path):
    config = write_config(tmp_path)
    with pytest.raises(ValueError, match="optim.lr"):
        load_config(config, ["optim.lr=-1"])
    with pytest.raises(ValueError, match="unknown model_overrides"):
        load_config(config, ["model_overrides.bogus=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(config, ["epochs"])


def test_distributed_gloo_replicas_stay_identical(tmp_path):
    config = write_config(tmp_path, val=None, epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "training.train",
        "--config",
        str(config),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[2]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = read_log(tmp_path / "run")
    assert len(log) == 2
    assert all(r["replica_spread"] == 0.0 for r in log)
    assert "world 2" in result.stderr


def test_evaluate_writes_report_table_plot_and_examples(tmp_path):
    config = write_config(tmp_path, epochs=1)
    run_train(config)
    out = tmp_path / "eval"
    args = evaluate.get_args_parser().parse_args(
        [
            "--checkpoint",
            str(tmp_path / "run" / "best.pt"),
            "--data",
            str(tmp_path / "data"),
            "--split",
            "val",
            "--out",
            str(out),
            "--save-examples",
            "2",
            "--device",
            "cpu",
        ]
    )
    results = evaluate.main(args)
    assert set(results["label_sets"]) == {"pts", "mat"}
    report = results["label_sets"]["pts"]
    assert report["faces"] == 2
    assert {"inter_ocular", "inter_pupil", "box"} == set(report["all"])
    assert {"stage1", "stage2"} == set(report["all"]["box"])
    assert "balanced_mean" in report["yaw_bins_box"]["stage2"]
    assert (out / "report.json").is_file()
    assert "| all | box | stage2 |" in (out / "report.md").read_text()
    assert (out / "ced.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "examples").glob("*.png"))) == 2


def test_evaluate_with_the_detector_reports_recall_and_the_same_faces_with_gt_boxes(tmp_path, tiny_checkpoint):
    portrait = Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg"
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "astronaut.jpg").write_bytes(portrait.read_bytes())
    write_pts(tmp_path / "images" / "astronaut.pts", mean_face(80, (224, 135)))  # about where the face is
    (tmp_path / "val.txt").write_text("astronaut\n")
    out = tmp_path / "eval"
    args = ["--checkpoint", str(tiny_checkpoint), "--format", "pts_folder", "--data", str(tmp_path), "--split", "val"]
    results = evaluate.main(
        evaluate.get_args_parser().parse_args([*args, "--boxes", "detector", "--second-pass", "--out", str(out)])
    )
    report = results["label_sets"]["default"]
    assert report["detector_recall"] == 1.0
    assert set(report["gt_boxes_same_faces"]) == {"box", "inter_ocular", "inter_pupil"}
    assert "The same faces with ground-truth boxes" in (out / "report.md").read_text()


def test_a_config_that_would_choose_on_a_test_split_is_refused(tmp_path):
    from training.config import load_config

    base = ["train.format=aflw2000", f"train.root={tmp_path}", "train.split=train"]
    for split in ("test", "full", "challenging"):
        with pytest.raises(ValueError, match=f"uses split '{split}', which is for the final report only"):
            load_config(None, [*base, "val.format=aflw2000", f"val.root={tmp_path}", f"val.split={split}"])
    assert load_config(None, [*base, "val.format=aflw2000", f"val.root={tmp_path}", "val.split=val"]).val


def test_calibration_is_never_fitted_on_a_test_split():
    from training.calibrate import score_set

    with pytest.raises(ValueError, match="never on a test split"):
        score_set(None, "pts_folder:../shared/data/300w-subset:test", 0.05)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", sorted(Path("training/configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_config_loads_and_chooses_on_val(path):
    from training.config import load_config

    config = load_config(path)
    assert config.val, "a config without val sets cannot choose its checkpoint honestly"


@pytest.mark.slow
def test_device_run_sizes_the_schedule_to_its_budget_and_leaves_a_shippable_run(tmp_path):
    """The lent-GPU script (training.device_run), dry-run on the CPU: probe, plan, train, summary under --out."""
    from training import device_run

    config = write_config(tmp_path, augment_on_device=True)
    out = tmp_path / "out"
    args = device_run.get_args_parser().parse_args(
        ["--config", str(config), "--budget-s", "25", "--out", str(out), "--device", "cpu"]
    )
    summary = device_run.main(args)
    assert summary["epochs"] >= 1
    assert summary["probe"]["samples_per_s"] > 0
    assert {p.name for p in out.iterdir()} == {"best.pt", "last.pt", "log.jsonl", "config.yaml", "summary.json"}
    assert len(read_log(out)) == summary["epochs"]
    assert load_config(out / "config.yaml").epochs == summary["epochs"]  # the schedule was built for that many
    assert device_run.plan_epochs(100, 10.0, 50, fixed_s=10, per_epoch_s=1) == 15
    assert device_run.plan_epochs(1, 10.0, 50, fixed_s=10, per_epoch_s=1) == 1

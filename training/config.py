"""Typed training configuration: a YAML file, then ``--set key.sub=value`` overrides, validated by pydantic.

The resolved configuration is written beside the checkpoints (``config.yaml``) and stored in them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model.config import ModelConfig, preset
from training.losses import HeatmapLossName, TwoStageLoss
from training.transforms import Augmentation


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


Norm = Literal["box", "inter_ocular", "inter_pupil"]


class DatasetSpec(_Frozen):
    """Where samples come from, and how much of an epoch they make up (train) or how they are scored (val).

    ``split``: AFLW2000-3D split file name, 300-W subset, a split file or sub-folder of a ``pts_folder``, or
    300W-LP subsets. ``weight``: this data set's share of an epoch's draws, relative to the other training sets.
    ``norm``: the NME normalisation its validation reports (box for AFLW2000-3D, inter-ocular for 300-W).
    """

    format: Literal["aflw2000", "300w", "300w_lp", "pts_folder"]
    root: Path
    split: str | None = None
    labels: str | None = None  # aflw2000: pts | mat; 300w_lp: pts_2d | pts_3d
    name: str | None = None  # in log keys (val_<name>_nme); defaults to the format
    weight: float = Field(1.0, gt=0)
    norm: Norm = "box"
    source: str | None = None  # every sample's annotation source (label offsets); default: what its reader says

    @property
    def key(self) -> str:
        return self.name or self.format


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, dict | DatasetSpec) else value


REPORT_ONLY_SPLITS = {"test", "full", "common", "challenging"}  # test splits, and the 300-W test protocol's subsets


def refuse_test_split(spec: DatasetSpec, role: str) -> None:
    """Nothing is chosen on a test split: a checkpoint, a calibration or a setting chosen there is not tested."""
    if spec.split is not None and spec.split in REPORT_ONLY_SPLITS:
        raise ValueError(
            f"{role} data set {spec.key!r} uses split {spec.split!r}, which is for the final report only: "
            "choose (checkpoints, calibration, settings) on a val split"
        )


class OptimConfig(_Frozen):
    """Optimiser and schedule. Defaults are the paper's §4.2.1: RMSprop, momentum 0.9, wd 1e-4, lr 1e-4 -> 1e-6."""

    name: Literal["rmsprop", "adam", "adamw"] = "rmsprop"
    lr: float = Field(1e-4, gt=0)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["step", "onecycle", "cosine"] = "step"
    milestones: tuple[int, ...] = (50, 80)  # epochs, for "step"
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # for "cosine"; "onecycle" warms up for its first 25 %
    grad_clip: float | None = None


class TrainConfig(_Frozen):
    """Everything a run needs; ``model`` names a preset, ``model_overrides`` changes its fields."""

    model: str = "cpu"
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    train: list[DatasetSpec]  # one or several; an epoch draws from all of them by their weights
    val: list[DatasetSpec] = Field(default_factory=list)  # each is validated and logged on its own
    select: dict[str, float] = Field(default_factory=dict)  # best.pt: lowest weighted mean of these val NMEs
    epoch_size: int | None = Field(None, ge=1)  # draws per epoch; default: the training sets' total size
    augment: Augmentation = Augmentation()  # validated by pydantic like the rest
    flip_offsets: Path | None = None  # per-source label offsets a flip carries over (python -m training.label_offsets)
    augment_on_device: bool = False  # hold the training faces on the device and augment there (training.device_augment)
    optim: OptimConfig = OptimConfig()
    epochs: int = Field(100, ge=1)  # the length the schedule is built for
    stop_after: int | None = Field(None, ge=1)  # end after this many epochs, schedule unchanged (time-boxed runs)
    batch_size: int = Field(16, ge=1)
    coarse_weight: float = Field(0.5, ge=0)
    coord_weight: float = Field(0.0, ge=0)  # L1 on the served decode of H_f (training.losses.decoded_l1); 0: off
    heatmap_loss: HeatmapLossName = "l2"  # "l2": the paper's eq. 9; "awing": Adaptive Wing with its loss map
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    workers: int = Field(2, ge=0)
    seed: int = 0
    output_dir: Path = Path("runs/train")
    max_steps_per_epoch: int | None = None  # smoke tests
    skip_bad: bool = False  # skip unreadable samples with a counted warning instead of stopping
    init_checkpoint: Path | None = None  # fine-tune from these weights (same model config)

    @field_validator("train", "val", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [] if value is None else _as_list(value)

    @model_validator(mode="after")
    def _check_names(self) -> TrainConfig:
        if not self.train:
            raise ValueError("train lists no data set")
        for spec in self.val:
            refuse_test_split(spec, "val")
        names = [spec.key for spec in self.val]
        if len(set(names)) != len(names):
            raise ValueError(f"val data sets need distinct names, got {names}")
        unknown = set(self.select) - set(names)
        if unknown:
            raise ValueError(f"select names {sorted(unknown)}, which are not val data sets {names}")
        return self

    def selection_weights(self) -> dict[str, float]:
        """Val set name -> weight of its NME in the selection criterion (all equal unless ``select`` says)."""
        return dict(self.select) if self.select else {spec.key: 1.0 for spec in self.val}

    def loss(self) -> TwoStageLoss:
        """The training loss these settings name (heatmap loss and the weights of its terms)."""
        return TwoStageLoss(self.coarse_weight, self.coord_weight, self.heatmap_loss)

    def network_config(self) -> ModelConfig:
        base = preset(self.model).to_dict()
        unknown = set(self.model_overrides) - set(base)
        if unknown:
            raise ValueError(f"unknown model_overrides: {sorted(unknown)}")
        return ModelConfig.from_dict({**base, **self.model_overrides})


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not of the form key=value")
    key, raw = assignment.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {assignment!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or start empty) and apply overrides; raises ``ValueError`` with a readable message."""
    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid training config {path or ''}:\n{exc}") from exc
    config.network_config()  # validate overrides early
    return config


def dump_config(config: TrainConfig) -> str:
    """YAML text of the resolved configuration."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

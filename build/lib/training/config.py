"""Typed training configuration: a YAML file, then ``--set key.sub=value`` overrides, validated by pydantic.

The resolved configuration is written beside the checkpoints (``config.yaml``) and stored in them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.config import ModelConfig, preset
from training.transforms import Augmentation


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class DatasetSpec(_Frozen):
    """Where samples come from. ``split``: AFLW2000-3D split file name, 300-W subset, or 300W-LP subsets."""

    format: Literal["aflw2000", "300w", "300w_lp", "pts_folder"]
    root: Path
    split: str | None = None
    labels: str | None = None  # aflw2000: pts | mat; 300w_lp: pts_2d | pts_3d


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
    train: DatasetSpec
    val: DatasetSpec | None = None
    augment: Augmentation = Augmentation()  # validated by pydantic like the rest
    optim: OptimConfig = OptimConfig()
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    coarse_weight: float = Field(0.5, ge=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    workers: int = Field(2, ge=0)
    seed: int = 0
    output_dir: Path = Path("runs/train")
    max_steps_per_epoch: int | None = None  # smoke tests
    skip_bad: bool = False  # skip unreadable samples with a counted warning instead of stopping
    init_checkpoint: Path | None = None  # fine-tune from these weights (same model config)

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

"""Checkpoint format: one ``torch.save`` file of plain types and tensors, loaded with ``weights_only=True``.

Layout::

    {"format": "dsc-landmarks/1", "config": ModelConfig.to_dict(), "state_dict": {...},
     "metadata": {"name", "version", "training": {...}, "metrics": {...}, "calibration": {"xs", "ys", "score"}, ...}}

Every failure to load raises :class:`CheckpointError` with a message that names the file and the cause.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from model.artifacts import CheckpointError, ConventionError
from model.codec import CONFIDENCE_SCORE, DECODE_BLUR_SIGMA, Calibration, Convention
from model.config import ModelConfig
from model.network import LandmarkNet, build_model

FORMAT = "dsc-landmarks/1"
log = logging.getLogger(__name__)


def save_checkpoint(
    path: str | Path, model: torch.nn.Module, config: ModelConfig, metadata: dict[str, Any] | None = None
) -> None:
    """Write the model weights, its configuration and metadata atomically (temporary file, then rename)."""
    path = Path(path)
    try:  # metadata must be plain JSON types so that weights_only loading accepts it
        metadata = json.loads(json.dumps(metadata or {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not plain JSON: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": config.to_dict(), "state_dict": state, "metadata": metadata}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate the raw payload (no model is built)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file: {first}") from exc
    except Exception as exc:  # noqa: BLE001 - torch's unpickler fails on text files in many ways (IndexError, ...)
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {FORMAT!r}")
    for key in ("config", "state_dict", "metadata"):
        if key not in payload:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}")
    return payload


def load_checkpoint(
    path: str | Path, expected: ModelConfig | None = None
) -> tuple[LandmarkNet, ModelConfig, dict[str, Any]]:
    """Rebuild the network from a checkpoint; refuse it if its config differs from ``expected``.

    Returns the model (on CPU, in train mode as built), its config and the metadata.
    """
    payload = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from exc
    if expected is not None and config != expected:
        diff = {k: (v, expected.to_dict()[k]) for k, v in config.to_dict().items() if v != expected.to_dict()[k]}
        raise CheckpointError(f"checkpoint {path} was trained with another config (stored, expected): {diff}")
    model = build_model(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"checkpoint {path} weights do not fit its config: {first}") from exc
    return model, config, payload["metadata"]


def convention_from_metadata(metadata: dict[str, Any], name: str = "default") -> Convention | None:
    """The annotation convention ``name`` stored in checkpoint metadata (``conventions``, written by
    ``training.conventions``): ``"default"`` is the one the checkpoint names as its default (none when it stores
    none), ``"none"`` none. Raises :class:`ConventionError` for a name the checkpoint does not hold."""
    stored = metadata.get("conventions") or {}
    offsets = stored.get("offsets", {})
    if name == "default":
        name = stored.get("default", "none")
    if name == "none":
        return None
    if name not in offsets:
        held = ", ".join(["default", "none", *offsets])
        raise ConventionError(f"the checkpoint holds no annotation convention {name!r}; choose one of: {held}")
    linear = stored.get("linear", {}).get(name)  # a shape-dependent part, when one was fitted
    gate = stored.get("gate", {}).get(name)  # beyond this radius, another convention
    fallback = convention_from_metadata({"conventions": {**stored, "gate": {}}}, gate["fallback"]) if gate else None
    return Convention(
        name,
        tuple((float(x), float(y)) for x, y in offsets[name]),
        tuple(float(v) for v in linear["mean"]) if linear else None,
        tuple(tuple(float(v) for v in row) for row in linear["matrix"]) if linear else None,
        float(gate["radius"]) if gate else None,
        fallback,
    )


def decode_blur_from_metadata(metadata: dict[str, Any]) -> float:
    """The heatmap smoothing (``decode_blur_sigma``, heatmap pixels) the checkpoint's conventions and calibration
    were fitted with; :data:`model.codec.DECODE_BLUR_SIGMA` when it records none. Raises :class:`CheckpointError`
    for a value that is not a finite number >= 0."""
    value = metadata.get("decode_blur_sigma", DECODE_BLUR_SIGMA)
    try:
        sigma = float(value)
    except (TypeError, ValueError):
        sigma = float("nan")
    if not math.isfinite(sigma) or sigma < 0:
        raise CheckpointError(f"decode_blur_sigma must be a finite number >= 0, the checkpoint holds {value!r}")
    return sigma


def calibration_from_metadata(metadata: dict[str, Any]) -> Calibration | None:
    """The confidence calibration stored in checkpoint metadata, if any and if fitted on today's score.

    A calibration fitted on another raw score (older checkpoints fitted the refined peak height alone) would map
    the wrong quantity, so it is ignored with a warning and the raw score is served until ``training.calibrate``
    is re-run.
    """
    raw = metadata.get("calibration")
    if not raw:
        return None
    score = raw.get("score", "peak")
    if score != CONFIDENCE_SCORE:
        log.warning(
            "ignoring the stored confidence calibration: it was fitted on score %r, this version computes %r; "
            "re-run training.calibrate",
            score,
            CONFIDENCE_SCORE,
        )
        return None
    return Calibration(xs=tuple(raw["xs"]), ys=tuple(raw["ys"]))

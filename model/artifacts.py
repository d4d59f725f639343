"""Where the shipped artefacts live and how a bad one is reported: torch-free, so the ONNX Runtime service (no
torch installed) imports it too."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED_CHECKPOINT = WEIGHTS / "dsc_landmarks_cpu.pt"  # what the torch service serves (committed)
SHIPPED_ONNX = WEIGHTS / "dsc_landmarks_cpu.onnx"  # ``python -m training.export`` of it (built, not committed)


class CheckpointError(RuntimeError):
    """A checkpoint or ONNX file is missing, unreadable, of another format, or does not match what is expected."""


class ConventionError(CheckpointError):
    """The annotation convention asked for (``EngineOptions.convention``) is not one the model file holds."""

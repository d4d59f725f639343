"""The two-stage heatmap network of Chim, Lee & Park (Sensors 2019) and everything that travels with it.

``model`` imports nothing from ``app`` or ``training``: the service and the training package both build on it.
"""

from typing import Any

__all__ = ["Landmarker"]


def __getattr__(name: str) -> Any:
    """``model.Landmarker``, imported on first use (so ``import model.network`` does not load the pipeline)."""
    if name == "Landmarker":
        from model.landmarker import Landmarker

        return Landmarker
    raise AttributeError(f"module 'model' has no attribute {name!r}")

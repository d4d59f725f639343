"""The one engine loader: :class:`model.engine.EngineOptions` -> the network on its runtime.

A checkpoint runs on torch (:mod:`model.inference`, the options' device, precision, batch size and CUDA graphs); an
exported ONNX file on ONNX Runtime's CPU provider (:mod:`model.onnx_engine`, imported only then: no torch needed).
Each file is read once, here.
"""

from __future__ import annotations

import importlib.util

from model.artifacts import SHIPPED_CHECKPOINT, SHIPPED_ONNX
from model.engine import Engine, EngineOptions


def resolve_runtime_name(options: EngineOptions) -> str:
    """``auto`` -> torch when it is installed, else ONNX Runtime."""
    if options.runtime != "auto":
        return options.runtime
    return "torch" if importlib.util.find_spec("torch") is not None else "onnxruntime"


def load_engine(options: EngineOptions | None = None) -> Engine:
    """The engine the options describe; ``weights`` defaults to the shipped file of the runtime."""
    options = options or EngineOptions()
    if resolve_runtime_name(options) == "onnxruntime":
        from model.onnx_engine import OnnxEngine

        return OnnxEngine(options.weights or SHIPPED_ONNX, threads=options.threads, convention=options.convention)
    from model.inference import load_for_inference

    return load_for_inference(options.weights or SHIPPED_CHECKPOINT, options)

"""The network on ONNX Runtime: the pipeline's ``infer`` without PyTorch (the slim image serves this).

The ONNX file (``python -m training.export``) holds the whole engine — input normalisation, the network, the
heatmap decoding of both stages, the crop -> image affine and the calibrated confidence — so this module only
stacks crops, runs the session and hands the rows out as :class:`model.pipeline.Landmarks`. Everything the service
needs to describe the model (its config, name, version, training metadata) travels in the file's metadata under
:data:`METADATA_KEY`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model.artifacts import CheckpointError, ConventionError
from model.config import ModelConfig
from model.engine import Crop, Landmarks, NamedModel, blank_crops

METADATA_KEY = "dsc_landmarks"  # JSON: {"config", "metadata", "opset", "inputs", "outputs", "normalisation"}
INPUTS = ("crops", "inverse")  # uint8 (N, S, S, 3) RGB; float32 (N, 2, 3) crop -> image
OUTPUTS = ("points", "confidence", "coarse_points")  # float32 (N, K, 2) image pixels; (N, K); (N, K, 2)


class OnnxEngine(NamedModel):
    """An exported model on ONNX Runtime's CPU provider, with the same ``infer``/``warmup`` as the torch engine."""

    device = "cpu"
    precision = "fp32"

    def __init__(self, path: str | Path, threads: int | None = None, convention: str = "default") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - the onnx extras install it
            raise CheckpointError(
                "LANDMARKS_RUNTIME=onnxruntime needs onnxruntime (pip install .[serve-onnx])"
            ) from exc
        path = Path(path)
        if not path.is_file():
            hint = " (make it with: python -m training.export)" if path.suffix == ".onnx" else ""
            raise CheckpointError(f"ONNX model {path} does not exist{hint}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default (every core)
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"ONNX model {path} cannot be loaded: {first}") from exc
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise CheckpointError(
                f"ONNX model {path} lacks the {METADATA_KEY!r} metadata (export it with training.export)"
            )
        info = json.loads(raw)
        self.config = ModelConfig.from_dict(info["config"])
        self.metadata: dict[str, Any] = info["metadata"]
        self.path = path
        self.convention_name = str(info.get("convention", "none"))  # the annotation convention the graph applies
        if convention not in ("default", self.convention_name):
            raise ConventionError(
                f"ONNX model {path} applies the {self.convention_name!r} annotation convention, not {convention!r}; "
                f"export one with: python -m training.export --convention {convention}"
            )

    def infer(self, crops: list[Crop], with_coarse: bool = False) -> list[Landmarks]:
        images = np.stack([c.image for c in crops])
        inverse = np.stack([c.inverse for c in crops]).astype(np.float32)
        points, conf, coarse = self.session.run(list(OUTPUTS), {INPUTS[0]: images, INPUTS[1]: inverse})
        points, conf, coarse = (np.asarray(a, dtype=np.float64) for a in (points, conf, coarse))
        return [Landmarks(points[i], conf[i], coarse[i] if with_coarse else None) for i in range(len(crops))]

    def warmup(self, batch_sizes: list[int]) -> None:
        for n in batch_sizes:
            self.infer(blank_crops(self.config.input_size, n))

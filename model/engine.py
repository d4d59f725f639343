"""The engine contract: crops in, landmarks out, whatever runs the network (:mod:`model.inference` on torch,
:mod:`model.onnx_engine` on ONNX Runtime), its options and its card. :mod:`model.runtime` loads one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from model.config import ModelConfig

Image = NDArray[np.uint8]
Runtime = Literal["auto", "torch", "onnxruntime"]
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class EngineOptions:
    """How the network runs, built once (from the service's Settings, a command line, or a caller) and passed by
    name. Device and precision are resolved in one place, :func:`model.inference.resolve_runtime`."""

    runtime: Runtime = "auto"  # auto: torch when it is installed, else ONNX Runtime
    weights: Path | None = None  # a checkpoint (torch) or an ONNX file; None: the shipped file of the runtime
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torch)
    precision: PrecisionName = "auto"  # torch; ONNX Runtime runs fp32
    max_batch_size: int = 16  # faces per network forward (and the largest CUDA graph)
    cuda_graphs: bool = True  # on CUDA only
    flip_test: bool = False  # also run the mirrored crop and average the heatmaps (2x compute)
    threads: int | None = None  # ONNX Runtime's intra-op threads (torch keeps its own); None: its default
    # the annotation convention of the points (model.codec.Convention): "default" (the checkpoint's, 300-W's for
    # the shipped one), "none" (the network's own average of its training sets' conventions) or a stored name
    convention: str = "default"


@dataclass(frozen=True)
class Crop:
    """One face ready for the network: ``image`` (S, S, 3) uint8 RGB and ``inverse`` (2, 3) crop -> image."""

    image: Image
    inverse: NDArray[np.float64]


@dataclass(frozen=True)
class Landmarks:
    """One face's result in image pixels: ``points`` (68, 2), ``confidence`` (68,) in [0, 1], and stage 1's
    (H0) points when the engine was asked for them (evaluation)."""

    points: NDArray[np.float64]
    confidence: NDArray[np.float64]
    coarse_points: NDArray[np.float64] | None = None


class NamedModel:
    """Name and version of a served model from its metadata, one place for the defaults (both engines)."""

    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "dsc-landmarks"))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unknown"))


def blank_crops(size: int, count: int) -> list[Crop]:
    """``count`` black crops with an identity affine: what the engines warm up on."""
    return [Crop(np.zeros((size, size, 3), np.uint8), np.eye(2, 3))] * count


class EngineInfo(Protocol):
    """What a served model is (its card, /v1/model and the metrics' labels), wherever it runs."""

    @property
    def config(self) -> ModelConfig: ...
    @property
    def device(self) -> object: ...
    @property
    def precision(self) -> str: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def convention_name(self) -> str: ...  # the annotation convention of its points ("none": the network's own)


class Engine(EngineInfo, Protocol):
    """A network runtime the service and the CLI can serve: :class:`model.inference.InferenceModel` (torch) or
    :class:`model.onnx_engine.OnnxEngine`."""

    def infer(self, crops: list[Crop], with_coarse: bool = False) -> list[Landmarks]: ...
    def warmup(self, batch_sizes: list[int]) -> None: ...


@dataclass(frozen=True)
class EngineCard:
    """An engine's :class:`EngineInfo` as plain, picklable data: what a process that does not hold the network
    (a cluster's ingress) knows about the one that does."""

    config: ModelConfig
    device: str
    precision: str
    metadata: dict[str, Any]
    name: str
    version: str
    convention_name: str = "none"

    @classmethod
    def of(cls, engine: EngineInfo) -> EngineCard:
        return cls(engine.config, str(engine.device), engine.precision, dict(engine.metadata), engine.name,
                   engine.version, engine.convention_name)  # fmt: skip

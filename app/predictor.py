"""The network side of the service: a batch of crops in, image-space landmarks out, on the inference thread."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from model.checkpoint import load_for_inference
from model.inference import InferenceModel, Precision, bucket_sizes, cpu_supports_bf16, resolve_device
from model.network import StandInNet


@dataclass(frozen=True)
class CropJob:
    """One face ready for the network: ``crop`` (S, S, 3) uint8 RGB and ``inverse`` (2, 3) crop -> image."""

    crop: NDArray[np.uint8]
    inverse: NDArray[np.float64]


@dataclass(frozen=True)
class FaceResult:
    """``points`` (68, 2) image pixels, ``confidence`` (68,) in [0, 1]."""

    points: NDArray[np.float64]
    confidence: NDArray[np.float64]


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto`` -> fp16 on CUDA, bf16 on CPUs with native bf16 dot products, else fp32."""
    if precision != "auto":
        return precision  # type: ignore[return-value]
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


class Predictor:
    """Owns the model on its device; :meth:`run_batch` is only ever called from the batcher's worker thread."""

    def __init__(self, engine: InferenceModel) -> None:
        self.engine = engine

    @classmethod
    def load(
        cls,
        checkpoint: str,
        device: str,
        precision: str,
        flip_test: bool = False,
        cuda_graphs: bool = True,
        max_batch_size: int = 64,
        stand_in: bool = False,
    ) -> Predictor:
        """The checkpoint on its device; ``stand_in`` swaps the network for :class:`model.network.StandInNet`
        (front-end benchmarks: everything else is the service as it runs)."""
        dev = resolve_device(device)
        engine = load_for_inference(
            checkpoint,
            dev,
            resolve_precision(precision, dev),
            flip_test=flip_test,
            cuda_graphs=cuda_graphs,
            max_batch_size=max_batch_size,
        )
        if stand_in:
            engine.net = StandInNet(engine.config).to(dev)  # type: ignore[assignment]
        return cls(engine)

    @property
    def input_size(self) -> int:
        return self.engine.config.input_size

    def run_batch(self, jobs: list[CropJob]) -> list[FaceResult]:
        crops = torch.from_numpy(np.stack([j.crop for j in jobs]))
        inverse = torch.from_numpy(np.stack([j.inverse for j in jobs]).astype(np.float32))
        if self.engine.device.type == "cuda":
            crops = crops.pin_memory()
        out = self.engine(crops, inverse)
        points = out.points.double().numpy()
        confidence = out.confidence.double().numpy()
        return [FaceResult(points[i], confidence[i]) for i in range(len(jobs))]

    def warmup(self, batch_sizes: list[int]) -> None:
        """Forwards on blank crops so the first request pays no allocation or kernel-selection cost.

        With CUDA graphs every bucket is captured here, whatever ``batch_sizes`` says, so that no request waits
        for a capture.
        """
        size = self.input_size
        if self.engine.graphed and batch_sizes:
            batch_sizes = bucket_sizes(self.engine.max_batch_size)
        for n in batch_sizes:
            blank = CropJob(np.zeros((size, size, 3), np.uint8), np.eye(2, 3))
            self.run_batch([blank] * n)

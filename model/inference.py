"""Inference on a device: crops in, image-space landmarks and confidences out (network + codec + geometry).

Used by the service's batcher and by ``training.evaluate``, so the decode path exists once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from model.codec import Calibration, confidence, decode, peak_height
from model.config import ModelConfig
from model.geometry import heatmap_to_image
from model.landmarks import MIRROR
from model.network import Heatmaps, LandmarkNet, normalize_input, to_channels_last

Precision = Literal["fp32", "bf16", "fp16"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return resolved


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe is not None and probe()) or (amx is not None and amx()))


@dataclass
class LandmarkOutput:
    """Per-face results, all on CPU: ``points`` (N, K, 2) image pixels, ``confidence`` (N, K) in [0, 1].

    ``coarse_points`` holds the stage-1 (H0) result when requested.
    """

    points: Tensor
    confidence: Tensor
    coarse_points: Tensor | None = None


@dataclass
class InferenceModel:
    """A network in eval mode on its device, with the precision and calibration it serves with."""

    net: LandmarkNet
    config: ModelConfig
    device: torch.device
    precision: Precision = "fp32"
    channels_last: bool = False
    calibration: Calibration | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    flip_test: bool = False  # also run the mirrored crop and average the heatmaps (2x the compute)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def __call__(self, crops: Tensor, inverse_matrices: Tensor, with_coarse: bool = False) -> LandmarkOutput:
        """Run a batch.

        Args:
            crops: ``(N, S, S, 3)`` uint8 RGB crops made with :func:`model.geometry.crop_matrix`.
            inverse_matrices: ``(N, 2, 3)`` crop -> image affines.
            with_coarse: also decode stage 1 (H0), for evaluation.
        """
        x = normalize_input(crops.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            heatmaps = self.net(x)
            if self.flip_test:
                heatmaps = _average_with_flip(heatmaps, self.net(x.flip(-1)))
        stride = self.config.heatmap_stride
        inverse = inverse_matrices.to(self.device)
        points, peak = decode(heatmaps.refined)
        conf = confidence(peak, peak_height(heatmaps.coarse), self.calibration)
        out = LandmarkOutput(heatmap_to_image(points, inverse, stride).cpu(), conf.cpu())
        if with_coarse:
            coarse, _ = decode(heatmaps.coarse)
            out.coarse_points = heatmap_to_image(coarse, inverse, stride).cpu()
        return out


def _average_with_flip(plain: Heatmaps, flipped: Heatmaps) -> Heatmaps:
    """Mirror the heatmaps of the flipped crop back (column u -> w - 1 - u, landmark i -> MIRROR[i]) and average.

    Exact under the pixel convention of :mod:`model.geometry`: flipping an S-pixel crop maps crop x to S - 1 - x
    and therefore heatmap u to S / r - 1 - u.
    """
    index = list(MIRROR)

    def back(h: Tensor) -> Tensor:
        return h.flip(-1)[:, index]

    return Heatmaps((plain.coarse + back(flipped.coarse)) / 2, (plain.refined + back(flipped.refined)) / 2)


def prepare(
    net: LandmarkNet,
    config: ModelConfig,
    device: str | torch.device = "auto",
    precision: Precision = "fp32",
    channels_last: bool | None = None,
    calibration: Calibration | None = None,
    metadata: dict[str, Any] | None = None,
    flip_test: bool = False,
) -> InferenceModel:
    """Move a network to its device in eval mode. ``channels_last`` defaults to on for CUDA only.

    On this project's CPUs channels_last measured neutral with bf16 (78.7 vs 78.9 faces/s at batch 8) and
    mixed with fp32 (+9 % at batch 8, none at 1 or 32): ``benchmarks/results/model.md``.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("fp16 autocast is for CUDA; use bf16 on CPU")
    if channels_last is None:
        channels_last = dev.type == "cuda"
    net = net.to(dev).eval()
    if channels_last:
        to_channels_last(net, refiner=True)
    return InferenceModel(net, config, dev, precision, channels_last, calibration, metadata or {}, flip_test)

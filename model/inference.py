"""The torch engine: crops in, image-space landmarks and confidences out (network + codec + geometry).

:meth:`InferenceModel.infer` is the ``infer`` callable of :class:`model.pipeline.Pipeline` (the service's batcher
calls it on its inference thread), so the decode path exists once. :func:`resolve_runtime` is the one place that
decides the device and the precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from model.checkpoint import (
    calibration_from_metadata,
    convention_from_metadata,
    decode_blur_from_metadata,
    load_checkpoint,
)
from model.codec import DECODE_BLUR_SIGMA, BlurMatrices, Calibration, Convention, blur_matrices, confidence, decode
from model.config import ModelConfig
from model.engine import Crop, EngineOptions, Landmarks, NamedModel, blank_crops
from model.geometry import heatmap_to_crop
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


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """``auto`` -> fp16 on CUDA, bf16 on CPUs with native bf16 dot products, else fp32; fp16 needs CUDA."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 needs CUDA, and the device is {device}; use bf16 or fp32 on CPU")
    return precision  # type: ignore[return-value]


def resolve_runtime(options: EngineOptions) -> tuple[torch.device, Precision]:
    """The device and precision the options ask for, checked against this machine (one place for both rules)."""
    device = resolve_device(options.device)
    return device, resolve_precision(options.precision, device)


def transform_points_torch(matrices: Tensor, points: Tensor) -> Tensor:
    """Batched affine on tensors: ``(N, 2, 3)`` matrices and ``(N, K, 2)`` points."""
    return points @ matrices[:, :, :2].transpose(1, 2) + matrices[:, :, 2].unsqueeze(1)


def heatmap_to_image(points: Tensor, inverse_matrices: Tensor, stride: int) -> Tensor:
    """Decoded heatmap points ``(N, K, 2)`` -> image pixels with the inverse crop matrices ``(N, 2, 3)``."""
    crop_points = heatmap_to_crop(points.double(), stride)
    return transform_points_torch(inverse_matrices.to(crop_points), crop_points).float()


@dataclass
class LandmarkOutput:
    """A batch's results as tensors on CPU: ``points`` (N, K, 2) image pixels, ``confidence`` (N, K) in [0, 1]
    (:meth:`InferenceModel.infer` hands them out per face as :class:`model.pipeline.Landmarks`).

    ``coarse_points`` holds the stage-1 (H0) result when requested.
    """

    points: Tensor
    confidence: Tensor
    coarse_points: Tensor | None = None


Heads = tuple[Tensor, Tensor, Tensor, Tensor]  # refined points, refined peak, coarse points, coarse peak


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 1 up to the first one that holds ``max_batch_size``: one CUDA graph each."""
    sizes = [1]
    while sizes[-1] < max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes


def bucket_for(n: int, buckets: list[int]) -> int:
    """Smallest bucket that holds ``n`` faces (``n`` must not exceed the largest)."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"batch of {n} exceeds the largest bucket {buckets[-1]}")


class CudaGraphs:
    """Replays one captured CUDA graph per batch-size bucket instead of launching the network's kernels one by one.

    A batch of ``n`` crops is copied into the static input of the smallest bucket that holds it (rows past ``n``
    keep stale crops: every row is computed independently in eval mode, and their outputs are dropped), the graph
    is replayed, and the first ``n`` rows of the static outputs are cloned out. Batches larger than the largest
    bucket run in chunks. Graphs are captured lazily, on first use of a bucket, on the calling thread, and share
    one memory pool. Only for CUDA; :class:`InferenceModel` runs eagerly elsewhere.
    """

    def __init__(
        self, fn: Callable[[Tensor], Heads], crop_shape: tuple[int, ...], device: torch.device, max_batch_size: int
    ) -> None:
        self.fn, self.crop_shape, self.device = fn, crop_shape, device
        self.buckets = bucket_sizes(max_batch_size)
        self.pool: Any = None
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor, Heads]] = {}

    def _on_device(self) -> contextlib.AbstractContextManager[Any]:
        """Capture and replay use the current device's streams: make it this runner's (``cuda:N``)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, Tensor, Heads]:
        static = torch.zeros((size, *self.crop_shape), dtype=torch.uint8, device=self.device)
        with self._on_device():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the graph: cuDNN picks its kernels here
                for _ in range(3):
                    self.fn(static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                outputs = self.fn(static)
        return graph, static, outputs

    def __call__(self, crops: Tensor) -> Heads:
        largest = self.buckets[-1]
        chunks = [self._run(crops[i : i + largest]) for i in range(0, len(crops), largest)]
        if len(chunks) == 1:
            return chunks[0]
        return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))  # type: ignore[return-value]

    def _run(self, crops: Tensor) -> Heads:
        n = len(crops)
        size = bucket_for(n, self.buckets)
        if size not in self.graphs:
            self.graphs[size] = self._capture(size)
        graph, static, outputs = self.graphs[size]
        static[:n].copy_(crops)
        with self._on_device():
            graph.replay()
        return tuple(o[:n].clone() for o in outputs)  # type: ignore[return-value]


@dataclass
class InferenceModel(NamedModel):
    """A network in eval mode on its device, with the precision and calibration it serves with.

    ``cuda_graphs``: on CUDA, replay captured graphs (:class:`CudaGraphs`, buckets up to ``max_batch_size``)
    instead of eager launches; ignored on CPU.
    """

    net: nn.Module  # a LandmarkNet (benchmarks put a stand-in of the same outputs in its place)
    config: ModelConfig
    device: torch.device
    precision: Precision = "fp32"
    channels_last: bool = False
    calibration: Calibration | None = None
    convention: Convention | None = None  # added to the final points (stage 1's stay the network's own)
    metadata: dict[str, Any] = field(default_factory=dict)
    flip_test: bool = False  # also run the mirrored crop and average the heatmaps (2x the compute)
    decode_blur: float = DECODE_BLUR_SIGMA  # smoothing before the peak is located (model.codec.decode)
    cuda_graphs: bool = False
    max_batch_size: int = 64
    _graphs: CudaGraphs | None = field(default=None, init=False, repr=False)
    _blur: BlurMatrices | None = field(default=None, init=False, repr=False)
    _mirror: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # The decode's constants, made on the device once: the graph-captured _heads must copy nothing from the
        # host (a copy during capture is refused, and one replayed would read a freed buffer).
        size = self.config.input_size // self.config.heatmap_stride
        self._blur = blur_matrices(self.decode_blur, size, size, self.device)
        with torch.inference_mode(False):
            self._mirror = torch.tensor(MIRROR, dtype=torch.long, device=self.device)
        if self.cuda_graphs and self.device.type == "cuda":
            shape = (self.config.input_size, self.config.input_size, 3)
            self._graphs = CudaGraphs(self._heads, shape, self.device, self.max_batch_size)

    @property
    def convention_name(self) -> str:
        return self.convention.name if self.convention is not None else "none"

    @property
    def graphed(self) -> bool:
        return self._graphs is not None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)

    def _heads(self, crops: Tensor) -> Heads:
        """uint8 crops on the device -> decoded points and peak heights of both stages (what a graph captures)."""
        x = normalize_input(crops)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            heatmaps = self.net(x)
            if self.flip_test:
                assert self._mirror is not None
                heatmaps = _average_with_flip(heatmaps, self.net(x.flip(-1)), self._mirror)
        points, peak = decode(heatmaps.refined, self.decode_blur, self._blur)
        coarse_points, coarse_peak = decode(heatmaps.coarse, self.decode_blur, self._blur)
        return points, peak, coarse_points, coarse_peak

    def finish(self, heads: Heads, inverse: Tensor, with_coarse: bool) -> list[Tensor]:
        """Decoded heads -> image-space points, calibrated confidence (and stage 1's points): the step after the
        network, here and in the exported ONNX graph (:class:`ExportGraph`)."""
        points, peak, coarse_points, coarse_peak = heads
        stride = self.config.heatmap_stride
        if self.convention is not None:
            points = self.convention(points)
        results = [heatmap_to_image(points, inverse, stride), confidence(peak, coarse_peak, self.calibration)]
        if with_coarse:
            results.append(heatmap_to_image(coarse_points, inverse, stride))
        return results

    @torch.inference_mode()
    def __call__(self, crops: Tensor, inverse_matrices: Tensor, with_coarse: bool = False) -> LandmarkOutput:
        """Run a batch.

        Args:
            crops: ``(N, S, S, 3)`` uint8 RGB crops made with :func:`model.geometry.crop_matrix`.
            inverse_matrices: ``(N, 2, 3)`` crop -> image affines.
            with_coarse: also return stage 1's (H0) points, for evaluation.
        """
        crops = crops.to(self.device, non_blocking=True)
        heads = self._graphs(crops) if self._graphs is not None else self._heads(crops)
        results = self.finish(heads, inverse_matrices.to(self.device), with_coarse)
        host = self._to_host(results)
        return LandmarkOutput(host[0], host[1], coarse_points=host[2] if with_coarse else None)

    def infer(self, crops: list[Crop], with_coarse: bool = False) -> list[Landmarks]:
        """The pipeline's ``infer``: one forward over a list of crops (``with_coarse``: stage 1's points too)."""
        images = torch.from_numpy(np.stack([c.image for c in crops]))
        inverse = torch.from_numpy(np.stack([c.inverse for c in crops]).astype(np.float32))
        if self.device.type == "cuda":
            images = images.pin_memory()
        out = self(images, inverse, with_coarse)
        points, conf = out.points.double().numpy(), out.confidence.double().numpy()
        coarse = out.coarse_points.double().numpy() if out.coarse_points is not None else None
        return [Landmarks(points[i], conf[i], None if coarse is None else coarse[i]) for i in range(len(crops))]

    def warmup(self, batch_sizes: list[int]) -> None:
        """Forwards on blank crops so the first request pays no allocation or kernel-selection cost.

        With CUDA graphs every bucket is captured here, whatever ``batch_sizes`` says, so that no request waits
        for a capture.
        """
        if self.graphed and batch_sizes:
            batch_sizes = bucket_sizes(self.max_batch_size)
        for n in batch_sizes:
            self.infer(blank_crops(self.config.input_size, n))

    def _to_host(self, tensors: list[Tensor]) -> list[Tensor]:
        """Results to host memory. On CUDA the copies are queued into pinned buffers and the calling thread then
        sleeps on a blocking event until they land, instead of spinning in a stream synchronise: with several
        workers on one GPU, each one's spinning inference thread would take a whole core for every forward."""
        if self.device.type != "cuda":
            return [t.cpu() for t in tensors]
        with torch.cuda.device(self.device):
            host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
            for dst, src in zip(host, tensors, strict=True):
                dst.copy_(src, non_blocking=True)
            landed = torch.cuda.Event(blocking=True)
            landed.record()
            landed.synchronize()
        return host


class ExportGraph(nn.Module):
    """The whole engine as one module for ``torch.onnx.export``: uint8 crops ``(N, S, S, 3)`` and crop -> image
    affines ``(N, 2, 3)`` in, image-space ``points`` ``(N, K, 2)``, calibrated ``confidence`` ``(N, K)`` and
    stage 1's ``coarse_points`` out — the same functions the torch engine runs (fp32, no CUDA graphs)."""

    def __init__(self, engine: InferenceModel) -> None:
        super().__init__()
        self.engine = engine
        self.net = engine.net  # registered, so the export sees the weights

    def forward(self, crops: Tensor, inverse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        points, conf, coarse = self.engine.finish(self.engine._heads(crops), inverse, with_coarse=True)
        return points, conf, coarse


def _average_with_flip(plain: Heatmaps, flipped: Heatmaps, mirror: Tensor) -> Heatmaps:
    """Mirror the heatmaps of the flipped crop back (column u -> w - 1 - u, landmark i -> ``mirror[i]``, the
    :data:`MIRROR` permutation as a tensor on the heatmaps' device) and average.

    Exact under the pixel convention of :mod:`model.geometry`: flipping an S-pixel crop maps crop x to S - 1 - x
    and therefore heatmap u to S / r - 1 - u.
    """

    def back(h: Tensor) -> Tensor:
        return h.flip(-1).index_select(1, mirror)

    return Heatmaps((plain.coarse + back(flipped.coarse)) / 2, (plain.refined + back(flipped.refined)) / 2)


def prepare(
    net: nn.Module,
    config: ModelConfig,
    options: EngineOptions,
    calibration: Calibration | None = None,
    metadata: dict[str, Any] | None = None,
    channels_last: bool | None = None,
    convention: Convention | None = None,
) -> InferenceModel:
    """Move a network to the options' device in eval mode. ``channels_last`` defaults to on for CUDA only.

    On this project's CPUs channels_last measured neutral with bf16 (78.7 vs 78.9 faces/s at batch 8) and
    mixed with fp32 (+9 % at batch 8, none at 1 or 32): ``benchmarks/results/model.md``.
    """
    device, precision = resolve_runtime(options)
    if channels_last is None:
        channels_last = device.type == "cuda"
    net = net.to(device).eval()
    if channels_last and isinstance(net, LandmarkNet):
        to_channels_last(net, refiner=True)
    return InferenceModel(
        net=net,
        config=config,
        device=device,
        precision=precision,
        channels_last=channels_last,
        calibration=calibration,
        convention=convention,
        metadata=metadata or {},
        flip_test=options.flip_test,
        decode_blur=decode_blur_from_metadata(metadata or {}),
        cuda_graphs=options.cuda_graphs,
        max_batch_size=options.max_batch_size,
    )


def load_for_inference(
    path: str | Path, options: EngineOptions | None = None, expected: ModelConfig | None = None
) -> InferenceModel:
    """Load a checkpoint for serving: eval mode, on the options' device and precision (defaults: CUDA when
    available, its precision), calibration and the options' annotation convention applied, CUDA graphs on CUDA when
    the options say so."""
    options = options or EngineOptions()
    net, config, metadata = load_checkpoint(path, expected)
    convention = convention_from_metadata(metadata, options.convention)
    return prepare(net, config, options, calibration_from_metadata(metadata), metadata, convention=convention)

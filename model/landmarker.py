"""The library entry point: photo in, faces with 68 points, confidences and head pose out.

    import model
    landmarker = model.Landmarker.load()                     # the shipped model, YuNet, the 3D head
    result = landmarker("photo.jpg")                         # a path, bytes, an RGB array or a PIL image
    for face in result.faces:
        face.landmarks.points, face.landmarks.confidence, face.pose
    for frame in landmarker.track(frames):                   # video: tracked faces, smoothed points
        [(face.track_id, face.landmarks.points) for face in frame.faces]

It runs :class:`model.pipeline.Pipeline` with a plain call of the engine, the pipeline the service runs with its
batcher, so the points are the service's (a test compares them). :meth:`Landmarker.many` batches the faces of
several photos through the network together.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from model.artifacts import SHIPPED_CHECKPOINT, SHIPPED_ONNX
from model.detector import YuNetDetector
from model.geometry import Box
from model.pipeline import (
    Engine,
    FaceBox,
    PhotoResult,
    Pipeline,
    PipelineOptions,
    box_problem,
    caller_faces,
    drive,
)  # fmt: skip
from model.pose import DEFAULT_HEAD_MODEL, HeadModel
from model.tracking import Tracker, TrackOptions

Runtime = Literal["auto", "torch", "onnxruntime"]
Channels = Literal["rgb", "bgr"]
ImageInput = str | Path | bytes | NDArray[np.uint8] | Image.Image


def load_engine(
    runtime: Runtime = "auto", weights: Path | None = None, options: PipelineOptions | None = None,
    threads: int | None = None,
) -> Engine:  # fmt: skip
    """The network on its runtime: a checkpoint on torch (the options' device, precision, batch size, graphs), or
    an exported ONNX file on ONNX Runtime's CPU provider (imported only then: no torch needed). ``auto``: torch
    when it is installed, else ONNX Runtime. ``weights`` defaults to the shipped file of that runtime."""
    if runtime == "auto":
        runtime = "torch" if importlib.util.find_spec("torch") is not None else "onnxruntime"
    if runtime == "onnxruntime":
        from model.onnx_engine import OnnxEngine

        return OnnxEngine(weights or SHIPPED_ONNX, threads=threads)
    from model.checkpoint import load_for_inference

    return load_for_inference(weights or SHIPPED_CHECKPOINT, options or PipelineOptions())


def read_image(image: ImageInput, channels: Channels = "rgb") -> NDArray[np.uint8]:
    """Any accepted input as an ``(H, W, 3)`` uint8 RGB array. Files and bytes are decoded with their EXIF
    orientation applied; an array is taken as ``channels`` order (``"bgr"`` for OpenCV's ``imread``), grey
    ``(H, W)`` arrays are repeated to three channels. Raises ``ValueError`` for anything else."""
    if isinstance(image, str | Path | bytes):
        try:
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else Path(image)) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except OSError as exc:
            raise ValueError(f"cannot read the image: {exc}") from exc
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    array = array[:, :, :3]
    return np.ascontiguousarray(array[:, :, ::-1] if channels == "bgr" else array)


class Landmarker:
    """An engine, a detector and a head model behind one call (module docstring). Build with :meth:`load`."""

    def __init__(self, engine: Engine, pipeline: Pipeline, max_faces: int = 10) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.max_faces = max_faces

    @classmethod
    def load(
        cls,
        weights: str | Path | None = None,
        runtime: Runtime = "auto",
        device: str | None = None,
        options: PipelineOptions | None = None,
        head_model: str | Path | None = DEFAULT_HEAD_MODEL,
        max_faces: int = 10,
        threads: int | None = None,
    ) -> Landmarker:
        """The shipped checkpoint (or ``weights``: a checkpoint, or an ONNX file with ``runtime="onnxruntime"``)
        on ``device`` (default: CUDA when available), YuNet with the options' detector settings, and the 3D head
        for pose (``head_model=None``: no pose). ``options`` default to the service's defaults; ``threads`` sets
        ONNX Runtime's (torch keeps its own)."""
        options = options or PipelineOptions()
        if device is not None:
            options = replace(options, device=device)
        engine = load_engine(runtime, None if weights is None else Path(weights), options, threads)
        head = None if head_model is None else HeadModel.load(Path(head_model))
        detector = YuNetDetector.from_options(options.detector)
        return cls(engine, Pipeline(options, engine.config.input_size, detector, head), max_faces)

    def __call__(
        self, image: ImageInput, boxes: Sequence[Box] | None = None, channels: Channels = "rgb"
    ) -> PhotoResult:
        """One photo's faces: the detector's (largest first, at most ``max_faces``), or one per box in ``boxes``
        (``[x1, y1, x2, y2]``, the tight box around a face's 68 points), in order."""
        return self.many([image], None if boxes is None else [boxes], channels)[0]

    def many(
        self,
        images: Sequence[ImageInput],
        boxes: Sequence[Sequence[Box] | None] | None = None,
        channels: Channels = "rgb",
    ) -> list[PhotoResult]:
        """Several photos, their faces batched through the network together (``options.max_batch_size``)."""
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} box lists for {len(images)} images")
        photos: list[tuple[NDArray[np.uint8], list[FaceBox] | None]] = []
        for image, given in zip(images, boxes if boxes is not None else [None] * len(images), strict=True):
            pixels = read_image(image, channels)
            if given is not None:
                problem = box_problem(given, pixels.shape[1], pixels.shape[0])
                if problem:
                    raise ValueError(problem)
            photos.append((pixels, None if given is None else caller_faces(given)))
        return self.pipeline.run_many(photos, self.engine.infer, self.pipeline.options.max_batch_size, self.max_faces)

    def track(
        self,
        frames: Iterable[ImageInput],
        options: TrackOptions | None = None,
        channels: Channels = "rgb",
        times: Iterable[float] | None = None,
    ) -> Iterator[PhotoResult]:
        """Video: the frames in order, each answered as it comes, faces tracked from frame to frame (each with a
        ``track_id``) and their points smoothed (:mod:`model.tracking`; ``options`` default to the service's).
        ``times`` gives each frame's time stamp in seconds (default: ``options.fps``)."""
        options = options or TrackOptions()
        problem = options.problem()
        if problem:
            raise ValueError(problem)
        tracker = Tracker(self.pipeline, options, self.max_faces)
        stamps = iter(times) if times is not None else None
        for frame in frames:
            at = None if stamps is None else next(stamps)
            yield drive(tracker.steps(read_image(frame, channels), at), self.engine.infer)

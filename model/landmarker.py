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

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from model.detector import YuNetDetector
from model.engine import Engine, EngineOptions, Runtime
from model.geometry import Box
from model.imaging import decode_image
from model.pipeline import (
    FaceBox,
    PhotoResult,
    Pipeline,
    PipelineOptions,
    box_problem,
    caller_faces,
    drive,
)  # fmt: skip
from model.pose import DEFAULT_HEAD_MODEL, HeadModel
from model.runtime import load_engine
from model.tracking import Tracker, TrackOptions

Channels = Literal["rgb", "bgr"]
ImageInput = str | Path | bytes | NDArray[np.uint8] | Image.Image


def read_image(image: ImageInput, channels: Channels = "rgb") -> NDArray[np.uint8]:
    """Any accepted input as an ``(H, W, 3)`` uint8 RGB array. Files and bytes are decoded as the service decodes
    uploads (:func:`model.imaging.decode_image`: JPEG, PNG, WebP or BMP, EXIF orientation applied; refusals raise
    :class:`model.imaging.ImageError`, a ``ValueError``); an array is taken as ``channels`` order (``"bgr"`` for
    OpenCV's ``imread``), grey ``(H, W)`` arrays are repeated to three channels. Raises ``ValueError`` for anything
    else."""
    if isinstance(image, str | Path):
        try:
            image = Path(image).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the image: {exc}") from exc
    if isinstance(image, bytes):
        return decode_image(image)
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

    def __init__(self, engine: Engine, pipeline: Pipeline, batch_size: int = EngineOptions.max_batch_size) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self.batch_size = batch_size  # faces per network call in many() and track()

    @classmethod
    def load(
        cls,
        weights: str | Path | None = None,
        runtime: Runtime = "auto",
        device: str | None = None,
        options: PipelineOptions | None = None,
        engine: EngineOptions | None = None,
        head_model: str | Path | None = DEFAULT_HEAD_MODEL,
        max_faces: int | None = None,
    ) -> Landmarker:
        """The shipped checkpoint (or ``weights``: a checkpoint, or an ONNX file with ``runtime="onnxruntime"``)
        on ``device`` (default: CUDA when available), YuNet with the options' detector settings, and the 3D head
        for pose (``head_model=None``: no pose). ``engine`` sets everything else about the network (precision,
        batch size, threads, ...; ``weights``, ``runtime`` and ``device`` override it); ``options`` how photos
        become crops. Both default to the service's defaults."""
        engine = engine or EngineOptions()
        if runtime != "auto":
            engine = replace(engine, runtime=runtime)
        if weights is not None:
            engine = replace(engine, weights=Path(weights))
        if device is not None:
            engine = replace(engine, device=device)
        options = options or PipelineOptions()
        if max_faces is not None:
            options = replace(options, max_faces=max_faces)
        loaded = load_engine(engine)
        head = None if head_model is None else HeadModel.load(Path(head_model))
        detector = YuNetDetector.from_options(options.detector)
        pipeline = Pipeline(options, loaded.config.input_size, detector, head)
        return cls(loaded, pipeline, engine.max_batch_size)

    def __call__(
        self,
        image: ImageInput,
        boxes: Sequence[Box] | None = None,
        channels: Channels = "rgb",
        passes: int | None = None,
    ) -> PhotoResult:
        """One photo's faces: the detector's (largest first, at most ``max_faces``), or one per box in ``boxes``
        (``[x1, y1, x2, y2]``, the tight box around a face's 68 points), in order. ``passes``: network passes
        per face (default: the options' for detected faces; for ``boxes`` one, and a second where a box does not
        fit its face's landmarks, as another face detector's box does not; see ``Pipeline.passes_for``)."""
        return self.many([image], None if boxes is None else [boxes], channels, passes)[0]

    def many(
        self,
        images: Sequence[ImageInput],
        boxes: Sequence[Sequence[Box] | None] | None = None,
        channels: Channels = "rgb",
        passes: int | None = None,
    ) -> list[PhotoResult]:
        """Several photos, their faces batched through the network together (``batch_size`` faces a call);
        ``passes`` as in :meth:`__call__`."""
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
        return self.run(photos, passes=passes)

    def run(
        self,
        photos: Sequence[tuple[NDArray[np.uint8], Sequence[FaceBox] | None]],
        with_coarse: bool = False,
        passes: int | None = None,
    ) -> list[PhotoResult]:
        """Decoded RGB photos, each with its faces (``None``: the detector's), their faces batched through the
        network (``batch_size`` a call). ``with_coarse`` also returns each face's stage-1 (H0) points, which
        evaluation reports; ``passes`` as in :meth:`__call__`."""
        infer = functools.partial(self.engine.infer, with_coarse=True) if with_coarse else self.engine.infer
        return self.pipeline.run_many(photos, infer, self.batch_size, passes=passes)

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
        tracker = Tracker(self.pipeline, options)
        stamps = iter(times) if times is not None else None
        for frame in frames:
            at = None if stamps is None else next(stamps)
            yield drive(tracker.steps(read_image(frame, channels), at), self.engine.infer)

"""Service settings from ``LANDMARKS_*`` environment variables (pydantic-settings), validated at start."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.artifacts import SHIPPED_CHECKPOINT, SHIPPED_ONNX
from model.detector import DetectorOptions
from model.engine import EngineOptions, PrecisionName, Runtime
from model.pipeline import MAX_PASSES, PipelineOptions
from model.pose import DEFAULT_HEAD_MODEL

# A setting that was replaced: (old name, new name, how to translate), refused at start when set.
RENAMED = ("SECOND_PASS", "PASSES", "true is 2 passes, false is 1")

# The defaults live on the options dataclasses; the settings take theirs.
ENGINE, PIPELINE, DETECTOR = EngineOptions(), PipelineOptions(), DetectorOptions()


class Settings(BaseSettings):
    """Every knob of the service. Invalid values stop the service at start with the field and the reason."""

    # Empty variables count as unset, so Compose can pass every LANDMARKS_* through with "" as "default".
    model_config = SettingsConfigDict(
        env_prefix="LANDMARKS_", env_ignore_empty=True, frozen=True, protected_namespaces=()
    )

    runtime: Runtime = Field(
        ENGINE.runtime,
        description="torch: serve LANDMARKS_CHECKPOINT; onnxruntime: serve LANDMARKS_ONNX_MODEL on the CPU; auto: "
        "torch when it is installed, else onnxruntime (the slim image)",
    )
    checkpoint: Path = Field(SHIPPED_CHECKPOINT, description="model checkpoint to serve (runtime torch)")
    onnx_model: Path = Field(
        SHIPPED_ONNX, description="exported model to serve (runtime onnxruntime; made by python -m training.export)"
    )
    device: str = Field(ENGINE.device, description="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    precision: PrecisionName = Field(
        ENGINE.precision, description="auto: fp16 on CUDA, bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32"
    )
    max_batch_size: int = Field(ENGINE.max_batch_size, ge=1, le=512, description="faces per network forward")
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="wait for more faces after the first (0: take what is there). Batches fill by themselves while "
        "the network runs, so this only adds latency at low load on CPU; a few ms can help fast GPUs",
    )
    queue_size: int = Field(256, ge=1, le=100_000, description="faces waiting for the network before 503")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="per-request deadline before 504")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="request body limit before 413")
    max_image_pixels: int = Field(40_000_000, ge=64, description="width x height limit before 422")
    max_pixels_in_flight: int = Field(
        120_000_000, ge=64, description="decoded pixels of all requests at once before 503 busy (>= max_image_pixels)"
    )
    max_faces: int = Field(PIPELINE.max_faces, ge=1, le=100, description="default and upper limit of faces per image")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch intra-op threads (default: torch's; with workers > 1, cores / workers)"
    )
    opencv_threads: int | None = Field(
        None, ge=1, le=1024, description="OpenCV threads inside one call (crop warp, YuNet); default: cores / workers"
    )
    preprocess_threads: int = Field(2, ge=1, le=64, description="threads for decode, detection and cropping")
    detector_max_side: int = Field(
        DETECTOR.max_side, ge=64, le=8192, description="images are downscaled to this for detection"
    )
    detector_score_threshold: float = Field(
        DETECTOR.score_threshold, gt=0, lt=1, description="YuNet detections below this are dropped"
    )
    detector_nms_threshold: float = Field(
        DETECTOR.nms_threshold, gt=0, lt=1, description="YuNet's non-maximum suppression IoU"
    )
    detector_min_face_px: float = Field(
        DETECTOR.min_face_px,
        ge=1,
        description="faces smaller than this (shorter box side, original image pixels) are dropped",
    )
    passes: int = Field(
        PIPELINE.passes,
        ge=1,
        le=MAX_PASSES,
        description="network passes per detected face: 1 on the detector's box, each more re-crops the face from the "
        "last pass's landmarks and runs it again (caller boxes: one pass); 3: the points are the mean of the three "
        "(a little more accurate, one more network run per detected face)",
    )
    flip_test: bool = Field(ENGINE.flip_test, description="also run each face mirrored and average (2x compute)")
    convention: str = Field(
        ENGINE.convention,
        min_length=1,
        description="annotation convention of the points: default (the checkpoint's: 300-W's for the shipped one), "
        "none (the network's own average of its training sets'), or one the checkpoint stores (aflw2000)",
    )
    align: bool = Field(
        PIPELINE.align,
        description="rotate detected faces' crops upright: the first on YuNet's eye line, later passes on the "
        "previous pass's eyes (caller boxes: never rotated)",
    )
    head_model: Path | None = Field(
        DEFAULT_HEAD_MODEL,
        description="3D head model for each face's yaw, pitch and roll (made by python -m training.fit_head); "
        "'none': no pose (every face's pose is null, pose_reason says so)",
    )
    cuda_graphs: bool = Field(
        ENGINE.cuda_graphs,
        description="on CUDA, replay one captured CUDA graph per power-of-two batch size (ignored on CPU)",
    )
    workers: int = Field(
        1, ge=1, le=64, description="server processes, each with its model copy and batcher (dsc-landmarks-serve)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="time for a request's line and headers to arrive before 408 and close"
    )
    max_header_bytes: int = Field(16_384, ge=1024, le=1_048_576, description="request line + headers, else 431")
    max_headers: int = Field(100, ge=10, le=10_000, description="header fields per request, else 431")
    keep_alive_s: int = Field(5, ge=1, le=600, description="idle seconds before a kept-alive connection closes")
    api_keys: SecretStr | None = Field(
        None,
        description="API keys: 'key1,key2' or '@/path/file' (one per line); set: every route but health needs one "
        "(Authorization: Bearer <key> or X-API-Key)",
    )
    rate_limit: float | None = Field(
        None, gt=0, le=1_000_000, description="requests per second per caller (API key, else client address)"
    )
    rate_burst: int | None = Field(
        None, ge=1, le=1_000_000, description="requests a caller may send at once (default: the rate, at least 1)"
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics on this port instead of the public one (404 there)"
    )
    metrics_host: str = Field("0.0.0.0", description="address the metrics port binds")
    cors_origins: str | None = Field(
        None, description="comma-separated origins browsers may call the API from ('*': any); unset: no CORS"
    )
    warmup_batches: int = Field(2, ge=0, le=100, description="forwards before /health/ready turns 200")
    drain_timeout_s: float = Field(20.0, ge=0, le=600, description="on SIGTERM, time to finish queued work")
    max_streams: int = Field(32, ge=0, le=10_000, description="open /landmarks/stream connections per process")
    stream_buffer: int = Field(
        2, ge=1, le=64, description="frames a stream holds while the model is busy; beyond it the oldest is dropped"
    )
    stream_idle_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a stream with no message for this long is closed (code 1000)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if os.environ.get(f"LANDMARKS_{RENAMED[0]}"):  # silently ignoring it would change what a deployment serves
            raise ValueError(f"LANDMARKS_{RENAMED[0]} was replaced by LANDMARKS_{RENAMED[1]}: {RENAMED[2]}")
        if self.queue_size < self.max_batch_size:
            raise ValueError(
                f"LANDMARKS_QUEUE_SIZE ({self.queue_size}) must be at least LANDMARKS_MAX_BATCH_SIZE "
                f"({self.max_batch_size}), or no batch could ever fill"
            )
        if self.max_pixels_in_flight < self.max_image_pixels:
            raise ValueError(
                f"LANDMARKS_MAX_PIXELS_IN_FLIGHT ({self.max_pixels_in_flight}) must be at least "
                f"LANDMARKS_MAX_IMAGE_PIXELS ({self.max_image_pixels}), or an image under the limit could never run"
            )
        return self

    def core_share(self) -> int:
        """Cores per server process: every core for one, cores / workers for several."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # macOS
        return max(1, cores // self.workers)

    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    def engine_options(self) -> EngineOptions:
        """The settings that decide how the network runs, as the engine's one options object: the weights of the
        runtime (the ONNX file on ONNX Runtime, else the checkpoint) and ONNX Runtime's threads (torch sets its
        own, :func:`app.host.share_cores`)."""
        onnx = self.runtime == "onnxruntime"
        return EngineOptions(
            runtime="onnxruntime" if onnx else "torch",
            weights=self.onnx_model if onnx else self.checkpoint,
            device=self.device,
            precision=self.precision,
            max_batch_size=self.max_batch_size,
            cuda_graphs=self.cuda_graphs,
            flip_test=self.flip_test,
            convention=self.convention,
            threads=(self.torch_threads or self.core_share()) if onnx else None,
        )

    def pipeline_options(self) -> PipelineOptions:
        """The settings that decide how a photo becomes faces and crops, as the pipeline's one options object."""
        return PipelineOptions(
            max_faces=self.max_faces,
            passes=self.passes,
            align=self.align,
            detector=DetectorOptions(
                max_side=self.detector_max_side,
                score_threshold=self.detector_score_threshold,
                nms_threshold=self.detector_nms_threshold,
                min_face_px=self.detector_min_face_px,
            ),
        )

    @field_validator("head_model", mode="before")
    @classmethod
    def _head_model(cls, value: object) -> object:
        return None if isinstance(value, str) and value.strip().lower() in ("none", "off", "false") else value

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str) -> str:
        if value == "auto":
            return "torch" if importlib.util.find_spec("torch") is not None else "onnxruntime"
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

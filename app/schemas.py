"""Response and error bodies: one shape whatever happens (``faces: []``, never null)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ImageInfo(BaseModel):
    width: int = Field(description="width of the EXIF-rotated image in pixels")
    height: int = Field(description="height of the EXIF-rotated image in pixels")


class HeadPose(BaseModel):
    yaw: float = Field(
        description="degrees; > 0: the face turns towards the image's left (the subject's right). AFLW2000-3D's "
        "Pose_Para signs, as are pitch and roll"
    )
    pitch: float = Field(description="degrees; > 0: the face tilts up (looks up)")
    roll: float = Field(description="degrees; > 0: the face turns clockwise in the image")
    confidence: float = Field(description="0-1: the mean confidence of the points the pose was fitted to")


class FaceResult(BaseModel):
    """One face of an answer (the HTTP body of :class:`model.pipeline.Face`)."""

    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x1, y1, x2, y2]: the box the final crop was made from, in the convention of a tight box "
        "around the 68 points: the caller's box; the detector's box mapped to that convention; or, with more "
        "passes (the default), the tight box of the previous pass's landmarks",
    )
    detection_score: float | None = Field(
        description="YuNet's face score in (0, 1] (faces under LANDMARKS_DETECTOR_SCORE_THRESHOLD are not "
        "returned): higher is more certain, but it is not a calibrated probability; null for caller boxes"
    )
    landmarks: list[list[float]] = Field(
        description="68 [x, y] float pixel coordinates in the original image, iBUG 300-W order; pixel centres "
        "are integers, (0, 0) is the centre of the top-left pixel"
    )
    confidence: list[float] = Field(description="68 per-point confidences in [0, 1] (calibrated against error)")
    score: float = Field(description="mean of the per-point confidences")
    pose: HeadPose | None = Field(
        description="head pose fitted to the 68 points (a 3D face from AFLW2000-3D train); null when it cannot "
        "be trusted or pose is off, with pose_reason"
    )
    pose_reason: str | None = Field(
        None,
        description="why pose is null (too few confident points, degenerate points, a poor fit, pose off); "
        "null when there is a pose",
    )
    track_id: int | None = Field(
        None,
        description="video (/landmarks/stream): the same number for as long as the face is tracked; a face "
        "that is lost and found again gets a new one. Null for photos",
    )


class ModelInfo(BaseModel):
    name: str
    version: str
    device: str


class LandmarksResponse(BaseModel):
    image: ImageInfo
    faces: list[FaceResult] = Field(description="one entry per face (per caller box, in order); [] when none is found")
    model: ModelInfo
    timings_ms: dict[str, float] = Field(
        description="decode, detect, crop, queue_wait (longest of the faces), inference (longest batch), total"
    )


class StreamFrame(LandmarksResponse):
    """One answer on ``/landmarks/stream``: a frame's faces, as ``POST /landmarks`` answers, plus where it is."""

    sequence: int = Field(description="the frame's number on this connection, counting every binary message from 0")
    dropped: int = Field(
        description="frames dropped (oldest first) since the previous answer because the client sent faster than "
        "the model answered"
    )
    detected: bool = Field(description="whether the face detector ran on this frame (else faces were tracked)")


class StreamError(BaseModel):
    """An error on ``/landmarks/stream``: the connection stays open unless a close frame follows."""

    error: str = Field(description="stable code, as POST /landmarks's (unsupported_media_type, payload_too_large, ...)")
    detail: str = Field(description="human-readable explanation")
    sequence: int | None = Field(None, description="the frame it is about; null for the connection itself")


class ErrorResponse(BaseModel):
    error: str = Field(description="stable machine-readable code, e.g. queue_full, unsupported_media_type")
    detail: str = Field(description="human-readable explanation")


class ModelCard(BaseModel):
    name: str
    version: str
    preset: str
    input_size: int
    heatmap_size: int
    num_landmarks: int
    device: str
    precision: str
    convention: str = Field(description="annotation convention of the points (LANDMARKS_CONVENTION resolved)")
    training: dict[str, Any]
    metrics: dict[str, Any]
    licence: str


class Health(BaseModel):
    status: str

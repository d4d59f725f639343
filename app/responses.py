"""What a prediction becomes for the client: the JSON response and the annotated picture (routes and CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from app.imaging import encode_png
from app.schemas import FaceResult, HeadPose, ImageInfo, LandmarksResponse, ModelInfo
from model.engine import EngineInfo
from model.pipeline import Face
from model.pose import PoseFit
from model.render import draw_label, draw_landmarks, draw_pose_axes


@dataclass
class Prediction:
    """Everything an answer needs: the decoded image (for rendering), faces, timings and batch sizes."""

    image: NDArray[np.uint8]
    faces: list[Face]
    timings_ms: dict[str, float]
    batch_sizes: list[int] = field(default_factory=list)


POSE_OFF = "pose estimation is off (LANDMARKS_HEAD_MODEL=none)"


def head_pose(fit: PoseFit | None) -> HeadPose | None:
    if fit is None or fit.pose is None:
        return None
    p = fit.pose
    return HeadPose(yaw=round(p.yaw, 2), pitch=round(p.pitch, 2), roll=round(p.roll, 2),
                    confidence=round(p.confidence, 4))  # fmt: skip


def to_response(prediction: Prediction, engine: EngineInfo) -> LandmarksResponse:
    faces = [
        FaceResult(
            box=[round(float(v), 3) for v in f.box],
            detection_score=None if f.detection_score is None else round(f.detection_score, 4),
            landmarks=np.round(f.landmarks.points, 3).tolist(),
            confidence=np.round(f.landmarks.confidence, 4).tolist(),
            score=round(float(np.mean(f.landmarks.confidence)), 4),
            pose=head_pose(f.pose),
            pose_reason=POSE_OFF if f.pose is None else f.pose.reason,
            track_id=f.track_id,
        )
        for f in prediction.faces
    ]
    height, width = prediction.image.shape[:2]
    return LandmarksResponse(
        image=ImageInfo(width=width, height=height),
        faces=faces,
        model=ModelInfo(
            name=engine.name,
            version=engine.version,
            device=str(engine.device),
        ),
        timings_ms=prediction.timings_ms,
    )


def annotate(prediction: Prediction) -> NDArray[np.uint8]:
    """The image (RGB) with every face's landmarks drawn, coloured by confidence, its head's axes and, in video,
    its track id."""
    image = prediction.image
    for face in prediction.faces:
        image = draw_landmarks(image, face.landmarks.points, face.landmarks.confidence, box=np.asarray(face.box))
        if face.pose is not None:
            image = draw_pose_axes(image, face.pose, face.box)
        if face.track_id is not None:
            image = draw_label(image, f"#{face.track_id}", face.box)
    return image


def render_png(prediction: Prediction) -> bytes:
    """:func:`annotate` as PNG bytes."""
    return encode_png(annotate(prediction))

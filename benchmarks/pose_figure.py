"""The picture of head-pose axes and signs in the README: ``python -m benchmarks.pose_figure``.

The shipped 3D head (``model/weights/head_model.npz``) at a frontal pose and at a positive yaw, pitch and roll,
projected and drawn as the service draws a face (contours and the head's axes, ``model.render``), with the
angles :func:`model.pose.estimate_pose` reads back from the drawn points. Writes ``benchmarks/results/pose_axes.png``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2
import numpy as np

from model.pose import HeadModel, estimate_pose, project, rotation
from model.render import draw_landmarks, draw_pose_axes

PANELS = (
    ("frontal", 0.0, 0.0, 0.0),
    ("yaw +35: turned to the image's left", 35.0, 0.0, 0.0),
    ("pitch +25: looking up", 0.0, 25.0, 0.0),
    ("roll +25: turned clockwise", 0.0, 0.0, 25.0),
)
SIDE = 300


def panel(head: HeadModel, title: str, yaw: float, pitch: float, roll: float) -> np.ndarray:
    geometric = HeadModel(head.mean, head.modes, head.weights)  # the drawn points are exact: no correction
    r = rotation(math.radians(pitch), math.radians(yaw), math.radians(roll))
    points = project(head.mean, r, SIDE * 0.2, np.array([SIDE / 2, SIDE * 0.52]))
    fit = estimate_pose(points, None, geometric)
    image = np.full((SIDE, SIDE, 3), 245, np.uint8)
    box = (*points.min(0), *points.max(0))
    image = draw_landmarks(image, points)
    image = draw_pose_axes(image, fit, (float(box[0]), float(box[1]), float(box[2]), float(box[3])))
    assert fit.pose is not None
    read = f"yaw {fit.pose.yaw:+.0f}  pitch {fit.pose.pitch:+.0f}  roll {fit.pose.roll:+.0f}"
    for y, text in ((22, title), (SIDE - 12, read)):
        cv2.putText(image, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (30, 30, 30), 1, cv2.LINE_AA)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pose_axes.png"))
    args = parser.parse_args()
    head = HeadModel.load()
    row = np.concatenate([panel(head, *p) for p in PANELS], axis=1)
    legend = np.full((28, row.shape[1], 3), 255, np.uint8)
    for x, (text, colour) in enumerate(
        (("x: the face's left to right", (230, 40, 40)), ("y: up", (40, 200, 40)), ("z: where it looks", (40, 90, 255)))
    ):
        cv2.putText(legend, text, (10 + 300 * x, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 2, cv2.LINE_AA)
    cv2.imwrite(str(args.out), np.concatenate([row, legend])[:, :, ::-1])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

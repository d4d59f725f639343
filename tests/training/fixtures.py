"""Write small data sets in the public releases' real file formats (300-W .pts, 300W-LP and AFLW2000-3D .mat)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from tests.conftest import draw_face
from training.datasets import write_pts


def write_face(folder: Path, name: str, seed: int, size: int = 160) -> np.ndarray:
    """A drawn face as ``name.jpg``; returns its 0-based points."""
    folder.mkdir(parents=True, exist_ok=True)
    image, points = draw_face(size, seed)
    cv2.imwrite(str(folder / f"{name}.jpg"), image[:, :, ::-1])
    return points


def pose_mat(yaw_deg: float) -> np.ndarray:
    return np.array([[0.1, math.radians(yaw_deg), -0.05, 200.0, 200.0, -100.0, 0.0015]])


def make_300w(root: Path, per_folder: int = 2) -> None:
    """``lfpw/{trainset,testset}``, ``helen/{trainset,testset}``, ``afw``, ``ibug`` with .pts beside .jpg."""
    seed = 0
    for part in ("lfpw/trainset", "lfpw/testset", "helen/trainset", "helen/testset", "afw", "ibug"):
        for i in range(per_folder):
            points = write_face(root / part, f"img_{i}", seed)
            write_pts(root / part / f"img_{i}.pts", points)
            seed += 1


def make_aflw2000(root: Path, count: int = 6) -> dict[str, np.ndarray]:
    """``images/imageNNNNN.{jpg,mat,pts}`` plus ``train.txt`` / ``val.txt``; yaws spread over the three bins."""
    truth = {}
    stems = []
    for i in range(count):
        stem = f"image{i:05d}"
        points = write_face(root / "images", stem, 100 + i)
        write_pts(root / "images" / f"{stem}.pts", points)
        pt3d = np.vstack([(points + 1).T, np.zeros((1, 68))])  # Matlab, 1-based
        scipy.io.savemat(root / "images" / f"{stem}.mat", {"pt3d_68": pt3d, "Pose_Para": pose_mat(-80 + 32 * i)})
        truth[stem] = points
        stems.append(stem)
    (root / "train.txt").write_text("\n".join(stems[: count - 2]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[count - 2 :]) + "\n")
    return truth


def make_300w_lp(root: Path) -> dict[str, np.ndarray]:
    """``AFW/<name>.{jpg,mat}``, ``AFW_Flip/<name>.{jpg,mat}`` and ``landmarks/AFW/<name>_pts.mat``."""
    truth = {}
    for i in range(2):
        name = f"AFW_{1000 + i}_1_0"
        points = write_face(root / "AFW", name, 200 + i)
        scipy.io.savemat(root / "AFW" / f"{name}.mat", {"Pose_Para": pose_mat(20.0)})
        (root / "landmarks" / "AFW").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "landmarks" / "AFW" / f"{name}_pts.mat", {"pts_2d": points + 1, "pts_3d": points + 1.5})
        image = cv2.imread(str(root / "AFW" / f"{name}.jpg"))
        (root / "AFW_Flip").mkdir(exist_ok=True)
        cv2.imwrite(str(root / "AFW_Flip" / f"{name}.jpg"), image[:, ::-1])
        scipy.io.savemat(root / "AFW_Flip" / f"{name}.mat", {"Pose_Para": pose_mat(-20.0)})
        truth[name] = points
    return truth


def make_pts_split(root: Path, count: int = 5, seed: int = 300) -> dict[str, np.ndarray]:
    """A flat 300-W folder as in ``300w-subset``: ``images/<stem>.{jpg,pts}`` plus ``train.txt`` / ``val.txt``."""
    truth = {}
    for i in range(count):
        stem = f"helen_{i}"
        truth[stem] = write_face(root / "images", stem, seed + i)
        write_pts(root / "images" / f"{stem}.pts", truth[stem])
    stems = sorted(truth)
    (root / "train.txt").write_text("\n".join(stems[:-2]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[-2:]) + "\n")
    return truth

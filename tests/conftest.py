"""Shared fixtures: tiny model configs, procedurally drawn faces, the optional real data set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.network import build_model

torch.set_num_threads(2)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aflw2000-3d"
SHARED_300W = SHARED_DATA.parent / "300w-subset"


def tiny_config(**overrides: object) -> ModelConfig:
    """The real structure at a size that runs in milliseconds."""
    values: dict[str, object] = {
        "name": "tiny",
        "input_size": 64,
        "heatmap_stride": 4,
        "stem_channels": 8,
        "growth_rate": 4,
        "layers_per_block": (2, 2, 2, 2, 2),
        "bottleneck_layers": 2,
        "dsc_width": 8,
        "kernel_size": 9,
        "kernel_sigma": 0.8,
        "heatmap_sigma": 1.2,
    }
    values.update(overrides)
    return ModelConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def tiny() -> ModelConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = tiny_config()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        path,
        build_model(config),
        config,
        {"name": "dsc-landmarks", "version": "tiny-test", "metrics": {"val_nme_box": 99.0}},
    )
    return path


@pytest.fixture(scope="session")
def aflw_dir() -> Path:
    if not (SHARED_DATA / "val.txt").is_file():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def w300_dir() -> Path:
    if not (SHARED_300W / "val.txt").is_file():
        pytest.skip(f"real data not present at {SHARED_300W}")
    return SHARED_300W


def mean_face(size: float = 100.0, centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A left-right symmetric 68-point face about ``size`` pixels wide, in the iBUG order.

    Built from the markup's geometric description (contours traversed left to right / clockwise in the image),
    not from the flip table, so it can test that table.
    """
    pts = np.zeros((68, 2))
    t = np.linspace(np.pi, 0, 17)  # jaw from the image-left ear, under the chin, to the image-right ear
    pts[0:17] = np.stack([0.5 * np.cos(t), 0.5 * np.sin(t)], 1)
    brow_x = np.linspace(-0.42, -0.08, 5)  # image-left brow, outer to inner
    pts[17:22] = np.stack([brow_x, -0.3 - 0.05 * np.sin(np.linspace(0.3, 2.8, 5))], 1)
    pts[22:27] = np.stack([-brow_x[::-1], pts[17:22, 1][::-1]], 1)  # image-right brow, inner to outer
    pts[27:31] = np.stack([np.zeros(4), np.linspace(-0.15, 0.08, 4)], 1)
    pts[31:36] = np.stack([np.linspace(-0.1, 0.1, 5), 0.14 + 0.03 * np.cos(np.linspace(-1.5, 1.5, 5))], 1)

    def eye(cx: float) -> np.ndarray:  # clockwise from the image-left corner: corner, 2 upper, corner, 2 lower
        a = np.pi - np.arange(6) * np.pi / 3
        return np.stack([cx + 0.1 * np.cos(a), -0.12 - 0.04 * np.sin(a)], 1)

    pts[36:42] = eye(-0.2)
    pts[42:48] = eye(0.2)
    a = np.pi - np.arange(12) * np.pi / 6  # outer lip, clockwise from the image-left corner
    pts[48:60] = np.stack([0.2 * np.cos(a), 0.28 - 0.07 * np.sin(a)], 1)
    b = np.pi - np.arange(8) * np.pi / 4
    pts[60:68] = np.stack([0.13 * np.cos(b), 0.28 - 0.03 * np.sin(b)], 1)
    return pts * size + np.asarray(centre)


def draw_face(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image of a drawn face and its 68 ground-truth points (image pixels)."""
    import cv2

    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), rng.integers(40, 90), np.uint8)
    pts = mean_face(size * 0.55, (size / 2 + rng.uniform(-5, 5), size / 2 + rng.uniform(-5, 5)))
    centre = tuple(int(v) for v in pts[27:36].mean(0))
    cv2.ellipse(image, centre, (int(size * 0.3), int(size * 0.36)), 0, 0, 360, (200, 170, 150), -1)
    for group in (range(17, 22), range(22, 27), range(36, 42), range(42, 48), range(48, 60)):
        poly = pts[list(group)].round().astype(np.int32)
        cv2.polylines(image, [poly], isClosed=len(group) == 6 or len(group) == 12, color=(60, 30, 30), thickness=2)
    return image, pts

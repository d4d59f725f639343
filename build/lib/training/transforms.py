"""Augmentation (§4.1.2): box jitter, rotation, scale, translation and flip become ONE affine warp per sample
(no repeated resampling); colour jitter and a random occluding rectangle act on the warped crop."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from model.geometry import DEFAULT_MARGIN


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random augmentation. Defaults are the paper's: rotation +-50 deg, scale 0.8-1.2, flip."""

    rotation: float = 50.0
    scale: tuple[float, float] = (0.8, 1.2)
    shift: float = 0.05  # translation jitter, fraction of the crop side
    margin_jitter: float = 0.1  # random crop: the box margin varies by +- this
    flip: float = 0.5  # probability
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    occlusion: float = 0.4  # probability of one erased rectangle
    occlusion_size: tuple[float, float] = (0.1, 0.4)  # rectangle side as a fraction of the crop side


@dataclass(frozen=True)
class AugParams:
    """One draw of :class:`Augmentation`."""

    rotation: float
    scale: float
    shift: tuple[float, float]
    margin: float
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    occluder: tuple[float, float, float, float] | None  # x, y, w, h as fractions of the crop side


def sample_params(aug: Augmentation, rng: np.random.Generator) -> AugParams:
    """Draw one set of parameters."""
    return AugParams(
        rotation=float(rng.uniform(-aug.rotation, aug.rotation)),
        scale=float(rng.uniform(*aug.scale)),
        shift=(float(rng.uniform(-aug.shift, aug.shift)), float(rng.uniform(-aug.shift, aug.shift))),
        margin=DEFAULT_MARGIN + float(rng.uniform(-aug.margin_jitter, aug.margin_jitter)),
        flip=bool(rng.random() < aug.flip),
        brightness=float(rng.uniform(-aug.brightness, aug.brightness)),
        contrast=float(rng.uniform(1 - aug.contrast, 1 + aug.contrast)),
        saturation=float(rng.uniform(1 - aug.saturation, 1 + aug.saturation)),
        occluder=_occluder(aug, rng) if rng.random() < aug.occlusion else None,
    )


def _occluder(aug: Augmentation, rng: np.random.Generator) -> tuple[float, float, float, float]:
    w, h = (float(rng.uniform(*aug.occlusion_size)) for _ in range(2))
    return float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h)), w, h


def colour_jitter(crop: NDArray[np.uint8], params: AugParams) -> NDArray[np.uint8]:
    """Brightness, contrast and saturation jitter on an RGB uint8 crop."""
    x = crop.astype(np.float32)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    x = grey + (x - grey) * params.saturation
    x = (x - x.mean()) * params.contrast + x.mean() + params.brightness * 255.0
    return np.clip(x, 0, 255).astype(np.uint8)


def occlude(crop: NDArray[np.uint8], params: AugParams, rng: np.random.Generator) -> NDArray[np.uint8]:
    """Erase one rectangle with uniform noise (random occlusion, §4.1.2); landmarks are unchanged."""
    if params.occluder is None:
        return crop
    size = crop.shape[0]
    x, y, w, h = (int(round(v * size)) for v in params.occluder)
    out = crop.copy()
    out[y : y + h, x : x + w] = rng.integers(0, 256, size=out[y : y + h, x : x + w].shape, dtype=np.uint8)
    return out

"""Augmentation on the training device: the training set held there, every batch warped and targeted there.

On a GPU the loader's CPU augmentation was the limit (230-445 samples/s on 16 cores, while the network trains far
faster). :class:`FaceBank` keeps one square crop per face on the device (uint8, ``BANK_SIDE`` pixels, the face's
landmark box at its centre with room for every augmentation), and :class:`DeviceAugmenter` makes each batch
there: the same distributions as :mod:`training.transforms` — rotation, scale, shift, margin jitter and flip
(with the 68-point mirror permutation) composed into one affine per face and applied by ``grid_sample``; colour
jitter (brightness, contrast, saturation); one occluding rectangle of noise; and the heatmap targets from the
shared codec. Enabled by ``augment_on_device: true`` in a training config.

Differences from the CPU path, by construction: the warp samples the bank crop (one resampling of the original
pixels, area-averaged) instead of the original image, and stays in float instead of rounding to uint8 between
steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from torch import Tensor

from model.codec import encode
from model.config import ModelConfig
from model.geometry import DEFAULT_MARGIN, box_from_points, crop_matrix, crop_to_heatmap, transform_points, warp
from model.landmarks import MIRROR
from model.network import PIXEL_MEAN, PIXEL_SCALE
from training.datasets import Sample, load_image
from training.label_offsets import flip_correction
from training.transforms import Augmentation

BANK_MARGIN = 1.5  # the bank crop is 2.5x the box's longer side: room for scale 0.85, margin +0.1, 40 deg and shift
GREY = (0.299, 0.587, 0.114)  # RGB -> grey, as OpenCV's COLOR_RGB2GRAY


def bank_side(config: ModelConfig) -> int:
    """Bank crops keep at least the training crop's resolution: a box spans input_size / (1 + margin) pixels."""
    return int(math.ceil(config.input_size / (1 + DEFAULT_MARGIN) * (1 + BANK_MARGIN) / 8) * 8)


@dataclass
class FaceBank:
    """Every training face on the device: ``images`` (N, 3, P, P) uint8 and ``points`` (N, K, 2) in bank pixels;
    each face's box is centred in its crop and its longer side spans ``P / (1 + BANK_MARGIN)`` pixels."""

    images: Tensor
    points: Tensor
    flip_offsets: Tensor | None = None  # (N, K, 2) bank pixels: what a flip must carry over (training.label_offsets)

    @classmethod
    def from_samples(
        cls,
        samples: Sequence[Sample],
        config: ModelConfig,
        device: torch.device,
        flip_offsets: NDArray[np.float64] | None = None,
    ) -> FaceBank:
        """``flip_offsets`` ``(N, K, 2)`` in image pixels, as :func:`training.label_offsets.per_sample` gives."""
        side = bank_side(config)
        offsets = None if flip_offsets is None else torch.empty((len(samples), len(samples[0].points), 2))
        images = torch.empty((len(samples), 3, side, side), dtype=torch.uint8)
        points = torch.empty((len(samples), len(samples[0].points), 2), dtype=torch.float32)
        for i, sample in enumerate(samples):
            image = load_image(sample.image)
            matrix = crop_matrix(box_from_points(sample.points), side, margin=BANK_MARGIN)
            shrink = float(np.hypot(*matrix[0, :2])) < 1
            crop = _area_warp(image, matrix, side) if shrink else warp(image, matrix, side)  # no aliasing
            images[i] = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))
            points[i] = torch.from_numpy(transform_points(matrix, sample.points).astype(np.float32))
            if offsets is not None and flip_offsets is not None:  # image pixels -> bank pixels (no rotation)
                offsets[i] = torch.from_numpy(flip_offsets[i] @ matrix[:, :2].T)
        return cls(images.to(device), points.to(device), None if offsets is None else offsets.to(device))

    def __len__(self) -> int:
        return len(self.images)


def _area_warp(image: NDArray[np.uint8], matrix: NDArray[np.float64], side: int) -> NDArray[np.uint8]:
    """Shrink with area averaging first (no aliasing), then the exact affine at the remaining scale."""
    scale = float(np.hypot(*matrix[0, :2]))
    small = np.asarray(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    actual = np.array([small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]])
    to_small = np.array([[actual[0], 0, (actual[0] - 1) / 2], [0, actual[1], (actual[1] - 1) / 2], [0, 0, 1]])
    rest = np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(to_small)
    return warp(small, rest[:2], side)


class DeviceAugmenter:
    """Batches of augmented, normalised inputs ``(B, 3, S, S)`` and heatmap targets ``(B, K, h, w)`` from a bank."""

    def __init__(self, bank: FaceBank, config: ModelConfig, aug: Augmentation, seed: int = 0) -> None:
        self.bank, self.config, self.aug, self.seed = bank, config, aug, seed
        self.device = bank.images.device
        self.mirror = torch.tensor(MIRROR, device=self.device)
        side = bank.images.shape[-1]
        self.box_side = side / (1 + BANK_MARGIN)  # the longer box side in bank pixels
        self.centre = (side - 1) / 2

    def epoch(self, indices: Sequence[int], batch_size: int, epoch: int) -> EpochBatches:
        """One epoch's batches over ``indices`` (drop_last, as the loader does), reproducible per epoch."""
        return EpochBatches(self, list(indices), batch_size, epoch)

    def _uniform(self, generator: torch.Generator, n: int, low: float, high: float) -> Tensor:
        return torch.rand(n, device=self.device, generator=generator) * (high - low) + low

    def matrices(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Bank -> crop affines ``(n, 2, 3)`` (what :func:`model.geometry.crop_matrix` builds, batched) and flips."""
        a, size = self.aug, self.config.input_size
        rotation = torch.deg2rad(self._uniform(generator, n, -a.rotation, a.rotation))
        scale = self._uniform(generator, n, *a.scale)
        shift = self._uniform(generator, 2 * n, -a.shift, a.shift).view(n, 2)
        margin = DEFAULT_MARGIN + self._uniform(generator, n, -a.margin_jitter, a.margin_jitter)
        flip = torch.rand(n, device=self.device, generator=generator) < a.flip
        side = self.box_side * (1 + margin)
        centre = self.centre + shift * side[:, None]
        s = size / side * scale
        cos, sin = torch.cos(rotation) * s, torch.sin(rotation) * s
        linear = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # (n, 2, 2)
        linear[:, 0] = torch.where(flip[:, None], -linear[:, 0], linear[:, 0])  # mirror x: diag(-1, 1) @ linear
        out_centre = torch.full((n, 2), (size - 1) / 2, device=self.device)
        translation = out_centre - (linear @ centre[:, :, None])[..., 0]
        return torch.cat([linear, translation[:, :, None]], -1), flip

    def warp(self, images: Tensor, matrices: Tensor) -> Tensor:
        """Bilinear resampling of bank crops into ``S x S`` crops (black outside), pixel centres as OpenCV's."""
        n, size, side = len(images), self.config.input_size, images.shape[-1]
        full = torch.cat([matrices, torch.tensor([0.0, 0.0, 1.0], device=self.device).expand(n, 1, 3)], 1)
        to_bank = torch.linalg.inv(full)  # crop pixels -> bank pixels

        def norm(pixels: int) -> Tensor:  # pixels -> grid_sample's [-1, 1] (align_corners=False)
            return torch.tensor(
                [[2 / pixels, 0, 1 / pixels - 1], [0, 2 / pixels, 1 / pixels - 1], [0, 0, 1]], device=self.device
            )

        theta = norm(side) @ to_bank @ torch.linalg.inv(norm(size))
        grid = F.affine_grid(theta[:, :2], [n, 3, size, size], align_corners=False)
        return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def colour(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Saturation, contrast, brightness per face, as :func:`training.transforms.colour_jitter`."""
        a, n = self.aug, len(x)
        grey = (x * torch.tensor(GREY, device=self.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        saturation = self._uniform(generator, n, 1 - a.saturation, 1 + a.saturation).view(n, 1, 1, 1)
        contrast = self._uniform(generator, n, 1 - a.contrast, 1 + a.contrast).view(n, 1, 1, 1)
        brightness = self._uniform(generator, n, -a.brightness, a.brightness).view(n, 1, 1, 1)
        x = grey + (x - grey) * saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * contrast + mean + brightness * 255.0).clamp(0, 255)

    def occlude(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One rectangle of uniform noise per face, with probability ``occlusion`` (as ``transforms.occlude``)."""
        a, (n, _, size, _) = self.aug, x.shape
        w = self._uniform(generator, n, *a.occlusion_size)
        h = self._uniform(generator, n, *a.occlusion_size)
        left = torch.rand(n, device=self.device, generator=generator) * (1 - w)
        top = torch.rand(n, device=self.device, generator=generator) * (1 - h)
        on = torch.rand(n, device=self.device, generator=generator) < a.occlusion
        x0, y0 = torch.round(left * size), torch.round(top * size)
        x1, y1 = x0 + torch.round(w * size), y0 + torch.round(h * size)
        pos = torch.arange(size, device=self.device, dtype=torch.float32)
        inside_x = (pos >= x0[:, None]) & (pos < x1[:, None])
        inside_y = (pos >= y0[:, None]) & (pos < y1[:, None])
        mask = (inside_y[:, :, None] & inside_x[:, None, :] & on[:, None, None])[:, None]
        noise = torch.randint(0, 256, x.shape, device=self.device, generator=generator).float()
        return torch.where(mask, noise, x)

    def batch(self, index: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``input`` normalised as the network expects, ``heatmaps`` targets, ``points`` in heatmap pixels."""
        matrices, flip = self.matrices(len(index), generator)
        x = self.occlude(self.colour(self.warp(self.bank.images[index], matrices), generator), generator)
        crop_points = self.bank.points[index] @ matrices[:, :, :2].transpose(1, 2) + matrices[:, :, 2][:, None]
        crop_points = torch.where(flip[:, None, None], crop_points[:, self.mirror], crop_points)
        if self.bank.flip_offsets is not None:
            linear = matrices[:, :, :2]
            unflipped = linear.clone()
            unflipped[:, 0] = -linear[:, 0]
            correction = flip_correction(self.bank.flip_offsets[index], linear, unflipped)
            crop_points = crop_points + torch.where(flip[:, None, None], correction, torch.zeros_like(correction))
        points = crop_to_heatmap(crop_points, self.config.heatmap_stride)
        heatmaps = encode(points, self.config.heatmap_size, self.config.heatmap_sigma)
        return {"input": (x - PIXEL_MEAN) * PIXEL_SCALE, "heatmaps": heatmaps, "points": points}


@dataclass
class EpochBatches:
    """What ``train_one_epoch`` iterates: a length and the batches, made on the device as they are taken."""

    augmenter: DeviceAugmenter
    indices: list[int]
    batch_size: int
    epoch: int

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        device = self.augmenter.device
        generator = torch.Generator(device=device).manual_seed(self.augmenter.seed * 100_003 + self.epoch)
        order = torch.as_tensor(np.asarray(self.indices), device=device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.augmenter.batch(order[start : start + self.batch_size], generator)

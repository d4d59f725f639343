"""Augmentation on the device: the same geometry as the CPU path, targets where the pixels went."""

import dataclasses

import numpy as np
import pytest
import torch

from model.landmarks import MIRROR
from tests.conftest import tiny_config
from tests.training.fixtures import make_aflw2000
from training.datasets import LandmarkDataset, read_aflw2000
from training.device_augment import DeviceAugmenter, FaceBank, bank_side
from training.transforms import Augmentation

STILL = Augmentation(rotation=0, scale=(1, 1), shift=0, margin_jitter=0, flip=0, brightness=0, contrast=0,
                     saturation=0, occlusion=0)  # fmt: skip


@pytest.fixture
def faces(tmp_path):
    make_aflw2000(tmp_path, count=6)
    return read_aflw2000(tmp_path, "train")


def test_without_augmentation_it_crops_what_the_cpu_path_crops(faces):
    config = tiny_config()
    bank = FaceBank.from_samples(faces, config, torch.device("cpu"))
    assert bank.images.shape == (len(faces), 3, bank_side(config), bank_side(config))
    batch = DeviceAugmenter(bank, config, STILL).batch(torch.arange(len(faces)), torch.Generator().manual_seed(0))
    dataset = LandmarkDataset(faces, config)
    for i in range(len(faces)):
        item = dataset[i]
        torch.testing.assert_close(batch["points"][i], item["points"], atol=1e-3, rtol=0)
        cpu = item["image"].permute(2, 0, 1).float()[None]
        ours = (batch["input"][i] * 127.5 + 127.5)[None]
        # One extra resampling (the bank) softens the drawn faces' sharp edges; blurred, the two agree, and no
        # one-pixel shift brings them closer (the geometry is the same).
        blur = torch.nn.AvgPool2d(5, 1, 2, count_include_pad=False)
        assert (blur(ours) - blur(cpu)).abs().mean() < 2.0
        aligned = (ours - cpu).abs().mean()
        for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            assert aligned < (torch.roll(ours, shift, (2, 3)) - cpu).abs().mean()
        torch.testing.assert_close(batch["heatmaps"][i], item["heatmaps"], atol=2e-3, rtol=0)


@pytest.mark.parametrize("landmark", [30, 36])  # the nose tip (on the midline) and the right eye's outer corner
def test_targets_follow_the_pixels_through_rotation_scale_shift_and_flip(landmark):
    config = dataclasses.replace(tiny_config(), input_size=128, heatmap_stride=1)
    side = bank_side(config)
    rng = np.random.default_rng(landmark)
    points = torch.tensor(rng.uniform(side * 0.35, side * 0.65, (1, 68, 2)), dtype=torch.float32)
    images = torch.zeros((1, 3, side, side), dtype=torch.uint8)
    x, y = (int(round(v)) for v in points[0, landmark].tolist())
    images[0, :, y - 1 : y + 2, x - 1 : x + 2] = 255  # a bright dot on the landmark
    points[0, landmark] = torch.tensor([x, y], dtype=torch.float32)
    moving = dataclasses.replace(STILL, rotation=40, scale=(0.85, 1.15), shift=0.05, margin_jitter=0.1, flip=0.5)
    augmenter = DeviceAugmenter(FaceBank(images, points), config, moving)
    generator = torch.Generator().manual_seed(1)
    flipped = 0
    for _ in range(12):
        batch = augmenter.batch(torch.zeros(1, dtype=torch.long), generator)
        image = batch["input"][0].mean(0)
        found = torch.stack(torch.where(image == image.max()))[[1, 0]].float().mean(1)  # (x, y) of the dot
        target = batch["points"][0]
        at = int(torch.argmin((target - found).norm(dim=1)))
        assert (target[at] - found).norm() < 1.0
        if at != landmark:  # a flip: the dot is now the mirrored landmark
            assert at == MIRROR[landmark]
            flipped += 1
    assert (flipped > 0) == (MIRROR[landmark] != landmark)


def test_colour_and_occlusion_stay_in_range_and_batches_are_reproducible(faces):
    config = tiny_config()
    bank = FaceBank.from_samples(faces, config, torch.device("cpu"))
    aug = Augmentation(rotation=40, occlusion=1.0)
    augmenter = DeviceAugmenter(bank, config, aug, seed=3)
    order = [0, 1, 2, 3, 2, 1, 0]
    first = [b["input"] for b in augmenter.epoch(order, 3, epoch=2)]
    again = [b["input"] for b in augmenter.epoch(order, 3, epoch=2)]
    other = [b["input"] for b in augmenter.epoch(order, 3, epoch=3)]
    assert len(first) == 2  # drop_last, as the loader
    torch.testing.assert_close(first, again)
    assert not torch.equal(first[0], other[0])
    for x in first:
        assert x.min() >= -1.0001
        assert x.max() <= 1.0001

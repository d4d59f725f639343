import numpy as np
import pytest

from model.geometry import box_from_points, crop_matrix, heatmap_to_crop, transform_points, warp
from model.landmarks import MIRROR
from tests.conftest import mean_face, tiny_config
from training.datasets import LandmarkDataset, Sample
from training.transforms import Augmentation


def dot_image(points: np.ndarray, size: int) -> np.ndarray:
    """One smooth blob per point, each on its own colour channel so points can be found again."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size, 3))
    for channel, (x, y) in enumerate(points):
        image[..., channel] += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5**2))
    return image.clip(0, 255).astype(np.uint8)


def centroid(channel: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0 : channel.shape[0], 0 : channel.shape[1]]
    w = channel.astype(float)
    return np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()


@pytest.mark.parametrize("seed", range(5))
def test_augmented_landmarks_follow_the_warped_pixels(seed):
    # Draw three landmarks into an image, warp it with a random augmentation, find them again.
    rng = np.random.default_rng(seed)
    points = np.array([[90.3, 100.7], [150.2, 110.4], [120.6, 160.1]])
    image = dot_image(points, 256)
    m = crop_matrix(
        box_from_points(points),
        128,
        0.8,
        rotation_deg=rng.uniform(-50, 50),
        scale=rng.uniform(0.8, 1.2),
        shift=(0.05, -0.05),
        flip=bool(seed % 2),
    )
    crop = warp(image, m, 128)
    expected = transform_points(m, points)
    for k in range(3):
        assert np.abs(centroid(crop[..., k]) - expected[k]).max() < 0.3


def test_dataset_targets_sit_on_the_transformed_points(tmp_path):
    import cv2

    config = tiny_config()
    face = mean_face(100, (128, 128))
    image = np.full((256, 256, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "f.png"), image)
    sample = Sample(tmp_path / "f.png", face, "f")
    dataset = LandmarkDataset([sample], config, Augmentation(), seed=3)
    item = dataset[0]
    assert item["image"].shape == (64, 64, 3)
    crop_pts = heatmap_to_crop(item["points"].numpy(), config.heatmap_stride)
    m = item["matrix"].double().numpy()
    projected = transform_points(m, face)
    flipped = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0] < 0
    if flipped:
        projected = projected[list(MIRROR)]
    np.testing.assert_allclose(crop_pts, projected, atol=1e-4)
    # The target heatmap peaks where the point is (when it is inside the map).
    hm = item["heatmaps"].numpy()
    k = 30  # nose
    y, x = np.unravel_index(hm[k].argmax(), hm[k].shape)
    assert abs(x - item["points"][k, 0].item()) <= 0.5
    assert abs(y - item["points"][k, 1].item()) <= 0.5


def test_flip_twice_is_identity():
    face = mean_face(80, (100, 90))
    box = box_from_points(face)
    plain = transform_points(crop_matrix(box, 64), face)
    flipped = transform_points(crop_matrix(box, 64, flip=True), face)[list(MIRROR)]
    again = flipped.copy()
    again[:, 0] = 63 - again[:, 0]  # flip the flipped crop about its centre...
    again = again[list(MIRROR)]  # ...and re-index again
    np.testing.assert_allclose(again, plain, atol=1e-9)


def test_augmentation_is_reproducible_per_epoch(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "f.png"), np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))
    dataset = LandmarkDataset(
        [Sample(tmp_path / "f.png", mean_face(90, (100, 100)), "f")], tiny_config(), Augmentation(), seed=1
    )
    a, b = dataset[0]["image"], dataset[0]["image"]
    assert (a == b).all()
    dataset.set_epoch(1)
    assert not (dataset[0]["image"] == a).all()


def test_loader_workers_see_each_epochs_augmentation(tmp_path):
    # Regression: persistent DataLoader workers kept their copy of the dataset at epoch 0, so every epoch
    # replayed the same augmented crops.
    import cv2

    from training.train import make_loader

    cv2.imwrite(str(tmp_path / "f.png"), np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))
    sample = Sample(tmp_path / "f.png", mean_face(90, (100, 100)), "f")
    dataset = LandmarkDataset([sample, sample], tiny_config(), Augmentation(), seed=1)
    loader = make_loader(dataset, batch_size=2, workers=1, shuffle=False)
    seen = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        (batch,) = list(loader)
        expected = dataset[0]["image"]  # what this epoch's augmentation gives in the main process
        assert (batch["image"][0] == expected).all()
        seen.append(batch["image"][0])
    assert not (seen[0] == seen[1]).all()
    assert not (seen[1] == seen[2]).all()

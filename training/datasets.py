"""Readers for the public data sets' own file formats, and the torch Dataset that turns samples into crops.

All readers return :class:`Sample` lists with 0-based float pixel coordinates (pixel centres on integers, see
:mod:`model.geometry`). The 300-W ``.pts`` files and the Matlab ``.mat`` files of 300W-LP / AFLW2000-3D are
1-based (Matlab and the 300-W release count the first pixel centre as 1), so every reader subtracts 1.

Supported layouts:

* **300-W style folders with a split file**: ``<root>/images/<stem>.{jpg,pts}`` (or directly under ``root``)
  plus ``<root>/<split>.txt`` listing stems (:func:`read_pts_split`), e.g. ``../shared/data/300w-subset``.
* **300-W style folders** (300W ``01_Indoor``/``02_Outdoor``, LFPW, HELEN, AFW, iBUG): ``<image>.{jpg,png}`` with
  ``<image>.pts`` beside it (:func:`read_pts_folder`); the test protocol's subsets by :data:`W300_SUBSETS`.
* **300W-LP**: ``<subset>/<name>.jpg`` with ``<subset>/<name>.mat`` (``Pose_Para``) and
  ``landmarks/<subset>/<name>_pts.mat`` (``pts_2d`` / ``pts_3d``, 68x2); ``<subset>_Flip`` folders take the
  landmarks of the unflipped image, mirrored (:func:`read_300w_lp`).
* **AFLW2000-3D**: ``<name>.jpg`` with ``<name>.mat`` (``pt3d_68`` 3x68, ``Pose_Para``) and optionally the 2D
  re-annotation ``<name>.pts`` (:func:`read_aflw2000`), with ``train.txt`` / ``val.txt`` split files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import cv2
import numpy as np
import scipy.io
import torch
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import Dataset, Sampler

from model.codec import encode
from model.config import ModelConfig
from model.geometry import box_from_points, crop_matrix, crop_to_heatmap, transform_points, warp
from model.landmarks import MIRROR, NUM_LANDMARKS
from training.label_offsets import flip_correction
from training.transforms import Augmentation, colour_jitter, occlude, sample_params

log = logging.getLogger(__name__)

T = TypeVar("T")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# The 300-W test protocol: common = LFPW test + HELEN test, challenging = iBUG, full = both;
# training = LFPW train + HELEN train + AFW.
W300_SUBSETS: dict[str, tuple[str, ...]] = {
    "common": ("lfpw/testset", "helen/testset"),
    "challenging": ("ibug",),
    "full": ("lfpw/testset", "helen/testset", "ibug"),
    "train": ("lfpw/trainset", "helen/trainset", "afw"),
    # The paper fine-tunes on all of "train"; to choose the epoch on faces it does not train on, the configs here
    # fine-tune on LFPW + HELEN train and validate on AFW (the test subsets above are for the report only).
    "train_lfpw_helen": ("lfpw/trainset", "helen/trainset"),
    "val_afw": ("afw",),
}


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One annotated face: ``points`` (68, 2) 0-based pixels; ``yaw`` in degrees when the data set has poses.

    ``source`` names whose annotation convention the labels follow (``aflw2000``, ``helen``, ``lfpw``, ``afw``,
    ...): label offsets differ by source (:mod:`training.label_offsets`).
    """

    image: Path
    points: NDArray[np.float64]
    name: str
    subset: str = ""
    yaw: float | None = None
    source: str = ""
    pose: tuple[float, float, float] | None = None  # (yaw, pitch, roll) in degrees, AFLW2000-3D's Pose_Para signs


def read_pts(path: Path) -> NDArray[np.float64]:
    """Read a 300-W ``.pts`` file and return 0-based ``(n_points, 2)`` coordinates."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        header = dict(line.split(":", 1) for line in lines[: lines.index("{")])
        n_points = int(header["n_points"])
        body = lines[lines.index("{") + 1 : lines.index("}")]
        points = np.array([[float(v) for v in line.split()] for line in body], dtype=np.float64)
    except (ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a valid .pts file ({exc})") from exc
    if points.shape != (n_points, 2):
        raise DataError(f"{path}: header says {n_points} points, found {len(points)}")
    return points - 1.0


def read_68(pts_path: Path) -> NDArray[np.float64]:
    """A face's 68 points from its ``.pts`` file; a missing file or another point count names the file."""
    if not pts_path.is_file():
        raise DataError(f"{pts_path}: missing")
    points = read_pts(pts_path)
    if points.shape != (NUM_LANDMARKS, 2):
        raise DataError(f"{pts_path}: expected 68 points, found {len(points)}")
    return points


def write_pts(path: Path, points: NDArray[np.floating]) -> None:
    """Write 0-based points as a 1-based 300-W ``.pts`` file (inverse of :func:`read_pts`)."""
    body = "\n".join(f"{x + 1:.3f} {y + 1:.3f}" for x, y in points)
    path.write_text(f"version: 1\nn_points: {len(points)}\n{{\n{body}\n}}\n", encoding="utf-8")


def _load_mat(path: Path) -> dict[str, NDArray[np.float64]]:
    try:
        return scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        raise DataError(f"{path}: cannot read .mat ({exc})") from exc


def _mat_field(mat: dict[str, NDArray[np.float64]], key: str, path: Path) -> NDArray[np.float64]:
    if key not in mat:
        raise DataError(f"{path}: lacks {key!r} (has {sorted(k for k in mat if not k.startswith('__'))})")
    return np.asarray(mat[key], dtype=np.float64)


def _pose(mat: dict[str, NDArray[np.float64]], path: Path) -> tuple[float, float, float]:
    """``(yaw, pitch, roll)`` in degrees from ``Pose_Para`` (pitch, yaw, roll in radians, then translation, scale)."""
    pose = _mat_field(mat, "Pose_Para", path).reshape(-1)
    if len(pose) < 3 or not np.isfinite(pose[:3]).all():
        raise DataError(f"{path}: Pose_Para has no finite angles")
    return math.degrees(float(pose[1])), math.degrees(float(pose[0])), math.degrees(float(pose[2]))


def _yaw_from_pose(mat: dict[str, NDArray[np.float64]], path: Path) -> float:
    return _pose(mat, path)[0]


def _as_68x2(array: NDArray[np.float64], path: Path, key: str) -> NDArray[np.float64]:
    if array.shape == (2, NUM_LANDMARKS) or array.shape == (3, NUM_LANDMARKS):
        array = array[:2].T
    if array.shape != (NUM_LANDMARKS, 2):
        raise DataError(f"{path}: {key} has shape {array.shape}, expected 68x2")
    return array - 1.0  # Matlab is 1-based


def _image_beside(stem_path: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = stem_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise DataError(f"{stem_path}: no image beside the annotation (looked for {', '.join(IMAGE_SUFFIXES)})")


def _collect(items: Iterable[T], read: Callable[[T], Sample], skip_bad: bool, what: str) -> list[Sample]:
    samples: list[Sample] = []
    skipped = 0
    for item in items:
        try:
            samples.append(read(item))
        except DataError as exc:
            if not skip_bad:
                raise
            skipped += 1
            log.warning("skipping %s", exc)
    if skipped:
        log.warning("%s: skipped %d bad samples, kept %d", what, skipped, len(samples))
    return samples


def source_of(name: str) -> str:
    """The 300-W source a file stem or folder names: ``helen_...`` / ``lfpw/trainset`` -> ``helen`` / ``lfpw``."""
    head = name.lower().replace("/", "_").split("_")[0]
    return head if head in ("helen", "lfpw", "afw", "ibug") else head or "unknown"


def read_split(path: Path) -> list[str]:
    """Stems listed one per line in a split file (``train.txt`` / ``val.txt``)."""
    if not path.is_file():
        raise DataError(f"{path}: split file does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_aflw2000(
    root: Path,
    split: str | None = None,
    labels: Literal["pts", "mat"] = "pts",
    skip_bad: bool = False,
) -> list[Sample]:
    """AFLW2000-3D: ``labels="pts"`` reads the 2D re-annotation, ``"mat"`` the original ``pt3d_68``.

    ``split`` names a split file under ``root`` (``train`` -> ``train.txt``); ``None`` takes every ``.mat``.
    Images live in ``root/images`` when that folder exists, else in ``root``.
    """
    folder = root / "images" if (root / "images").is_dir() else root
    stems = read_split(root / f"{split}.txt") if split is not None else sorted(p.stem for p in folder.glob("*.mat"))
    if not stems:
        raise DataError(f"{root}: no AFLW2000-3D samples found")

    def read(stem_path: Path) -> Sample:
        mat_path = stem_path.with_suffix(".mat")
        if not mat_path.is_file():
            raise DataError(f"{mat_path}: missing")
        mat = _load_mat(mat_path)
        if labels == "pts":
            points = read_68(stem_path.with_suffix(".pts"))
        else:
            points = _as_68x2(_mat_field(mat, "pt3d_68", mat_path), mat_path, "pt3d_68")
        pose = _pose(mat, mat_path)
        return Sample(_image_beside(stem_path), points, stem_path.stem, split or "", pose[0], "aflw2000", pose)

    return _collect((folder / s for s in stems), read, skip_bad, f"AFLW2000-3D {root}")


def read_pts_folder(root: Path, subset: str = "", skip_bad: bool = False) -> list[Sample]:
    """Every image with a ``.pts`` beside it under ``root`` (recursively), as in the 300-W family's releases."""
    if not root.is_dir():
        raise DataError(f"{root}: folder does not exist")
    files = sorted(root.rglob("*.pts"))
    if not files:
        raise DataError(f"{root}: no .pts files found")

    def read(pts_path: Path) -> Sample:
        name = subset or root.name
        return Sample(_image_beside(pts_path), read_68(pts_path), pts_path.stem, name, source=source_of(name))

    return _collect(files, read, skip_bad, f"300-W folder {root}")


def read_pts_split(root: Path, split: str, skip_bad: bool = False) -> list[Sample]:
    """A flat 300-W style folder (``<stem>.jpg`` + ``<stem>.pts``, in ``root/images`` when that exists) whose
    samples are the stems listed in the split file ``root/<split>.txt``."""
    folder = root / "images" if (root / "images").is_dir() else root
    stems = read_split(root / f"{split}.txt")
    if not stems:
        raise DataError(f"{root / f'{split}.txt'}: lists no sample")

    def read(stem_path: Path) -> Sample:
        points = read_68(stem_path.with_suffix(".pts"))
        return Sample(_image_beside(stem_path), points, stem_path.stem, split, source=source_of(stem_path.stem))

    return _collect((folder / s for s in stems), read, skip_bad, f"300-W folder {root} ({split})")


def read_300w(root: Path, subset: str, skip_bad: bool = False) -> list[Sample]:
    """The 300-W protocol subsets (:data:`W300_SUBSETS`) from the standard folder tree under ``root``."""
    if subset not in W300_SUBSETS:
        raise DataError(f"unknown 300-W subset {subset!r}; choose from {sorted(W300_SUBSETS)}")
    samples: list[Sample] = []
    for part in W300_SUBSETS[subset]:
        samples += read_pts_folder(root / part, subset=part, skip_bad=skip_bad)
    return samples


LP_SUBSETS = ("AFW", "HELEN", "IBUG", "LFPW")


def read_300w_lp(
    root: Path,
    subsets: Sequence[str] = LP_SUBSETS,
    labels: Literal["pts_2d", "pts_3d"] = "pts_2d",
    flips: bool = True,
    skip_bad: bool = False,
) -> list[Sample]:
    """300W-LP: images of ``subsets`` (and their ``_Flip`` folders), landmarks from ``landmarks/<subset>``."""
    folders = [(s, False) for s in subsets] + ([(s, True) for s in subsets] if flips else [])
    samples: list[Sample] = []
    for subset, flipped in folders:
        folder = root / (f"{subset}_Flip" if flipped else subset)
        if not folder.is_dir():
            if flipped:
                continue
            raise DataError(f"{folder}: 300W-LP subset folder does not exist")

        def read(mat_path: Path, subset: str = subset, flipped: bool = flipped, folder: Path = folder) -> Sample:
            image = _image_beside(mat_path)
            lm_path = root / "landmarks" / subset / f"{mat_path.stem}_pts.mat"
            if not lm_path.is_file():
                raise DataError(f"{lm_path}: landmarks missing for {image}")
            points = _as_68x2(_mat_field(_load_mat(lm_path), labels, lm_path), lm_path, labels)
            yaw = _yaw_from_pose(_load_mat(mat_path), mat_path)
            if flipped:
                width = _image_width(image)
                points = np.stack([width - 1 - points[:, 0], points[:, 1]], 1)[list(MIRROR)]
                yaw = -yaw
            return Sample(image, points, mat_path.stem, folder.name, yaw, f"300w_lp_{subset.lower()}")

        samples += _collect(sorted(folder.glob("*.mat")), read, skip_bad, f"300W-LP {folder}")
    return samples


def _image_width(path: Path) -> int:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot decode image")
    return int(image.shape[1])


def load_image(path: Path) -> NDArray[np.uint8]:
    """RGB uint8 image; raises :class:`DataError` naming the file when it cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot decode image")
    return np.ascontiguousarray(image[:, :, ::-1])


class LandmarkDataset(Dataset[dict[str, torch.Tensor]]):
    """Samples -> one affine crop each (augmentation composed into it), heatmap targets from the shared codec.

    Each item: ``image`` (S, S, 3) uint8, ``heatmaps`` (K, h, w) float32, ``points`` (K, 2) in heatmap pixels,
    ``matrix`` (2, 3) image -> crop, ``index``. With ``augment`` None the crop is the deterministic box crop.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        config: ModelConfig,
        augment: Augmentation | None = None,
        seed: int = 0,
        flip_offsets: NDArray[np.float64] | None = None,
    ) -> None:
        if not samples:
            raise DataError("empty data set")
        if flip_offsets is not None and flip_offsets.shape != (len(samples), NUM_LANDMARKS, 2):
            raise ValueError(f"flip_offsets has shape {flip_offsets.shape}, expected ({len(samples)}, 68, 2)")
        self.flip_offsets = flip_offsets  # (N, K, 2) image pixels: flips keep each source's label convention
        self.samples = list(samples)
        self.config = config
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation per epoch so runs are reproducible with any number of workers."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        image = load_image(sample.image)
        points = sample.points
        size = self.config.input_size
        box = box_from_points(points)
        if self.augment is None:
            matrix = crop_matrix(box, size)
            crop = warp(image, matrix, size)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            params = sample_params(self.augment, rng)
            matrix = crop_matrix(box, size, params.margin, params.rotation, params.scale, params.shift, params.flip)
            crop = colour_jitter(warp(image, matrix, size), params)
            crop = occlude(crop, params, rng)
            if params.flip:
                points = points[list(MIRROR)]
        crop_points = transform_points(matrix, points)
        if self.augment is not None and params.flip and self.flip_offsets is not None:
            unflipped = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ matrix[:, :2]
            crop_points = crop_points + flip_correction(self.flip_offsets[index], matrix[:, :2], unflipped)
        hm_points = torch.from_numpy(crop_to_heatmap(crop_points, self.config.heatmap_stride)).float()
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop)),
            "heatmaps": encode(hm_points, self.config.heatmap_size, self.config.heatmap_sigma),
            "points": hm_points,
            "matrix": torch.from_numpy(matrix).float(),
            "index": torch.tensor(index),
        }


def load_samples(
    format: str, root: Path, split: str | None = None, labels: str | None = None, skip_bad: bool = False
) -> list[Sample]:
    """Samples of any supported layout (the ``DatasetSpec`` of a training config), images checked up front."""
    if format == "aflw2000":
        samples = read_aflw2000(root, split, "mat" if labels == "mat" else "pts", skip_bad)
    elif format == "300w":
        samples = read_300w(root, split or "full", skip_bad)
    elif format == "pts_folder":
        if split and (root / f"{split}.txt").is_file():
            samples = read_pts_split(root, split, skip_bad)
        else:
            samples = read_pts_folder(root / split if split else root, skip_bad=skip_bad)
    elif format == "300w_lp":
        subsets = tuple(split.split(",")) if split else LP_SUBSETS
        samples = read_300w_lp(root, subsets, "pts_3d" if labels == "pts_3d" else "pts_2d", skip_bad=skip_bad)
    else:
        raise DataError(f"unknown data format {format!r}")
    return verify_images(samples, skip_bad)


def samples_from_spec(spec: str, skip_bad: bool = False) -> list[Sample]:
    """Samples named on a command line as ``FORMAT:ROOT:SPLIT[:LABELS]`` (e.g. ``pts_folder:../data/300w:val``)."""
    parts = spec.split(":")
    if not 3 <= len(parts) <= 4 or not all(parts[:2]):
        raise DataError(f"{spec!r}: expected FORMAT:ROOT:SPLIT[:LABELS], e.g. pts_folder:../data/300w:val")
    fmt, root, split, *labels = parts
    return load_samples(fmt, Path(root), split, labels[0] if labels else None, skip_bad)


def verify_images(samples: list[Sample], skip_bad: bool = False) -> list[Sample]:
    """Check every image's structure before training starts, so a broken file cannot stop an epoch half-way."""

    def check(sample: Sample) -> Sample:
        try:
            with Image.open(sample.image) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{sample.image}: not a readable image ({exc})") from exc
        return sample

    return _collect(samples, check, skip_bad, "image check")


class MixtureSampler(Sampler[int]):
    """Draws an epoch from several data sets concatenated in one index space, each by its weight.

    Data set ``d`` of ``sizes[d]`` samples makes up ``weights[d] / sum(weights)`` of the ``num_samples`` draws
    (uniform within it, without replacement while it lasts, so each sample is seen about equally often). The
    order depends only on ``(seed, epoch)``; under ``torch.distributed`` each rank takes every ``world_size``-th
    draw, which replaces ``DistributedSampler``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(sizes) != len(weights) or not sizes or min(sizes) < 1 or min(weights) <= 0:
            raise ValueError(f"need one positive weight per non-empty data set, got sizes {sizes} weights {weights}")
        self.sizes, self.seed, self.rank, self.world_size = list(sizes), seed, rank, world_size
        total = num_samples or sum(sizes)
        share = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        counts = np.floor(share * total).astype(int)
        counts[np.argsort(-(share * total - counts))[: total - counts.sum()]] += 1  # largest remainders
        self.counts = counts.tolist()
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draw(self, rng: np.random.Generator, size: int, count: int) -> NDArray[np.int64]:
        rounds = [rng.permutation(size) for _ in range(-(-count // size))]
        return np.concatenate(rounds)[:count]

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        draws = [o + self._draw(rng, n, c) for o, n, c in zip(self.offsets, self.sizes, self.counts, strict=True)]
        order = rng.permutation(np.concatenate(draws))
        usable = len(order) - len(order) % self.world_size
        return iter(order[self.rank : usable : self.world_size].tolist())

    def __len__(self) -> int:
        return sum(self.counts) // self.world_size

"""Annotation conventions: stored in the checkpoint by name, chosen by EngineOptions (default / none / a name),
added to the final points only, scaled by each face's own size, and baked into an exported ONNX graph."""

import numpy as np
import pytest
import torch

from model.artifacts import CheckpointError
from model.checkpoint import convention_from_metadata, save_checkpoint
from model.codec import Convention
from model.engine import Crop, EngineOptions
from model.inference import load_for_inference
from tests.conftest import tiny_config

K = 68
SHIFT = [[0.01, -0.02]] * K  # label - prediction, in longer sides of the predicted box


def metadata(default: str = "300w") -> dict:
    offsets = {"300w": SHIFT, "aflw2000": [[-0.01, 0.0]] * K}
    return {"version": "conv-test", "conventions": {"default": default, "offsets": offsets}}


def test_a_convention_moves_each_point_by_its_offset_times_the_faces_own_size():
    points = torch.tensor([[[10.0, 20.0], [30.0, 60.0]], [[0.0, 0.0], [5.0, 2.0]]])  # sides 40 and 5
    moved = Convention("x", ((0.1, -0.2), (0.0, 0.5)))(points)
    expected = points + torch.tensor([[[4.0, -8.0], [0.0, 20.0]], [[0.5, -1.0], [0.0, 2.5]]])
    torch.testing.assert_close(moved, expected)
    scaled = Convention("x", ((0.1, -0.2), (0.0, 0.5)))(points * 3)  # unit-free: pixels of any size agree
    torch.testing.assert_close(scaled, expected * 3)


def test_the_checkpoint_names_its_default_and_refuses_a_convention_it_does_not_hold():
    assert convention_from_metadata({}) is None  # older checkpoints: the network's own points
    assert convention_from_metadata(metadata()).name == "300w"
    assert convention_from_metadata(metadata(), "aflw2000").offsets[0] == (-0.01, 0.0)
    assert convention_from_metadata(metadata(), "none") is None
    with pytest.raises(CheckpointError, match="no annotation convention 'lfpw'; choose one of: default, none, 300w"):
        convention_from_metadata(metadata(), "lfpw")
    with pytest.raises(CheckpointError, match="no annotation convention 'aflw2000'"):
        convention_from_metadata({}, "aflw2000")


@pytest.fixture(scope="module")
def conv_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    from model.network import build_model

    path = tmp_path_factory.mktemp("conv") / "conv.pt"
    save_checkpoint(path, build_model(tiny_config()), tiny_config(), metadata())
    return path


def crops(n: int = 3) -> list[Crop]:
    rng = np.random.default_rng(0)
    inverse = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 5.0]])  # crop -> image: x2 and a shift
    return [Crop(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), inverse) for _ in range(n)]


def test_the_engine_adds_the_chosen_convention_to_the_final_points_only(conv_checkpoint):
    fp32 = {"device": "cpu", "precision": "fp32", "cuda_graphs": False}
    own = load_for_inference(conv_checkpoint, EngineOptions(**fp32, convention="none"))
    served = load_for_inference(conv_checkpoint, EngineOptions(**fp32))
    assert (own.convention_name, served.convention_name) == ("none", "300w")
    a, b = own.infer(crops(), with_coarse=True), served.infer(crops(), with_coarse=True)
    for x, y in zip(a, b, strict=True):
        side = (x.points.max(0) - x.points.min(0)).max()  # image px; the crop's are half, the offsets unit-free
        np.testing.assert_allclose(y.points - x.points, np.asarray(SHIFT) * side, atol=1e-3)
        np.testing.assert_array_equal(y.coarse_points, x.coarse_points)  # stage 1 stays the network's
        np.testing.assert_array_equal(y.confidence, x.confidence)
    with pytest.raises(CheckpointError, match="choose one of"):
        load_for_inference(conv_checkpoint, EngineOptions(**fp32, convention="helen"))


def test_a_stored_shape_dependent_part_is_read_and_moves_points_with_the_shape():
    meta = metadata()
    matrix = np.zeros((2 * K, 2 * K))
    matrix[0, 0] = 0.5  # point 0's x residual grows with point 0's x in the box
    meta["conventions"]["linear"] = {"300w": {"mean": [0.0] * (2 * K), "matrix": matrix.tolist()}}
    convention = convention_from_metadata(meta)
    assert convention.matrix is not None
    points = torch.zeros(2, K, 2)
    points[:, 1:, 0] = torch.linspace(0, 100, K - 1)  # a face 100 px wide (and 0 high: side 100)
    points[0, 0, 0], points[1, 0, 0] = 0.0, 100.0  # point 0 at the left edge, then at the right edge
    moved = convention(points) - points
    # shape x of point 0: -0.5 and +0.5 box sides; residual 0.01 + 0.5 * x, times the side (100 px)
    torch.testing.assert_close(moved[:, 0, 0], torch.tensor([0.01 - 0.25, 0.01 + 0.25]) * 100)
    torch.testing.assert_close(moved[:, 1:], torch.tensor(SHIFT[1:]).expand(2, K - 1, 2) * 100)


def test_a_shape_beyond_the_radius_gets_the_fallback_convention():
    """The default's regression serves the shapes it was fitted on; a face whose shape lies farther from their mean
    than the stored radius (a face turned away, for 300-W's) gets the fallback convention instead."""
    meta = metadata()
    zero = np.zeros((2 * K, 2 * K)).tolist()
    meta["conventions"]["linear"] = {"300w": {"mean": [0.0] * (2 * K), "matrix": zero}}
    meta["conventions"]["gate"] = {"300w": {"fallback": "aflw2000", "radius": 0.25}}
    convention = convention_from_metadata(meta)
    assert convention.fallback is not None
    assert convention.fallback.name == "aflw2000"
    near = torch.zeros(1, K, 2)
    near[0, :, 0] = torch.linspace(-50, 50, K)  # RMS distance from the zero mean shape: 0.20 box sides
    far = near.clone()
    far[0, :, 1] = torch.linspace(-50, 50, K)  # 0.29
    moved_near, moved_far = convention(near) - near, convention(far) - far
    torch.testing.assert_close(moved_near[0, 0], torch.tensor(SHIFT[0]) * 100)  # 300-W's offsets
    torch.testing.assert_close(moved_far[0, 0], torch.tensor([-0.01, 0.0]) * 100)  # AFLW2000-3D's

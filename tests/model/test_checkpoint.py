import dataclasses

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from model.artifacts import CheckpointError
from model.checkpoint import calibration_from_metadata, decode_blur_from_metadata, load_checkpoint, save_checkpoint
from model.codec import CONFIDENCE_SCORE, DECODE_BLUR_SIGMA
from model.engine import EngineOptions
from model.geometry import crop_matrix, invert
from model.inference import CudaGraphs, bucket_for, bucket_sizes, load_for_inference
from model.landmarks import MIRROR
from model.network import build_model
from tests.conftest import tiny_config


def test_save_load_round_trip(tmp_path):
    config = tiny_config()
    model = build_model(config)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, config, {"name": "t", "calibration": {"xs": [0.0, 1.0], "ys": [0.1, 0.9]}})
    loaded, loaded_config, metadata = load_checkpoint(path, expected=config)
    assert loaded_config == config
    assert metadata["name"] == "t"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_mismatched_config_is_refused_with_a_clear_message(tmp_path):
    config = tiny_config()
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model(config), config)
    with pytest.raises(CheckpointError, match="another config.*dsc_width"):
        load_checkpoint(path, expected=dataclasses.replace(config, dsc_width=16))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_files_raise_checkpoint_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(path)


def test_missing_file_and_foreign_payloads(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(foreign)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    config = tiny_config()
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_model(dataclasses.replace(config, dsc_width=16)), config)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path)


def test_load_for_inference_returns_image_space_points(tmp_path):
    config = tiny_config()
    path = tmp_path / "m.pt"
    calibration = {"xs": [0.0, 1.0], "ys": [0.0, 0.5], "score": CONFIDENCE_SCORE}
    save_checkpoint(path, build_model(config), config, {"calibration": calibration})
    engine = load_for_inference(path, EngineOptions(device="auto"))
    assert engine.device.type in ("cpu", "cuda")
    assert not engine.net.training
    box = [50.0, 60.0, 150.0, 170.0]
    m = crop_matrix(torch.tensor(box).numpy(), config.input_size)
    crops = torch.randint(0, 255, (3, config.input_size, config.input_size, 3), dtype=torch.uint8)
    inv = torch.tensor(invert(m), dtype=torch.float32).expand(3, 2, 3)
    out = engine(crops, inv, with_coarse=True)
    assert out.points.shape == (3, 68, 2)
    assert out.confidence.shape == (3, 68)
    assert out.coarse_points is not None
    assert out.coarse_points.shape == (3, 68, 2)
    assert (out.confidence <= 0.5).all()  # the stored calibration is applied
    # Points lie in the crop window mapped back to the image.
    side = 110 * 1.25
    assert (out.points[..., 0] > 100 - side / 2 - 1).all()
    assert (out.points[..., 0] < 100 + side / 2 + 1).all()


def test_bf16_channels_last_matches_fp32_closely(tmp_path):
    config = tiny_config()
    path = tmp_path / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(path, build_model(config), config)
    crops = torch.randint(0, 255, (2, config.input_size, config.input_size, 3), dtype=torch.uint8)
    inv = torch.eye(2, 3).expand(2, 2, 3)
    fp32 = load_for_inference(path, EngineOptions(device="cpu", precision="fp32"))(crops, inv)
    bf16 = load_for_inference(path, EngineOptions(device="cpu", precision="bf16"))(crops, inv)
    assert bf16.points.shape == fp32.points.shape
    assert torch.isfinite(bf16.points).all()
    with pytest.raises(ValueError, match="fp16"):
        load_for_inference(path, EngineOptions(device="cpu", precision="fp16"))


def test_flip_test_is_symmetric_for_a_symmetric_network_output(tmp_path):
    # Averaging with the mirrored crop must give the same answer for a crop and its mirror image (re-indexed).
    config = tiny_config()
    path = tmp_path / "m.pt"
    torch.manual_seed(1)
    save_checkpoint(path, build_model(config), config)
    engine = load_for_inference(path, EngineOptions(device="cpu", flip_test=True))
    crops = torch.randint(0, 255, (1, config.input_size, config.input_size, 3), dtype=torch.uint8)
    eye = torch.eye(2, 3)[None]
    a = engine(crops, eye).points[0]
    b = engine(crops.flip(2), eye).points[0]
    mirrored = torch.stack([config.input_size - 1 - b[:, 0], b[:, 1]], 1)[list(MIRROR)]
    torch.testing.assert_close(a, mirrored, atol=1e-3, rtol=0)


def test_a_calibration_fitted_on_another_score_is_ignored_with_a_warning(caplog):
    knots = {"xs": [0.0, 1.0], "ys": [0.0, 0.5]}
    assert calibration_from_metadata({"calibration": {**knots, "score": CONFIDENCE_SCORE}}) is not None
    with caplog.at_level("WARNING"):
        assert calibration_from_metadata({"calibration": knots}) is None  # older files: fitted on the peak alone
    assert "re-run training.calibrate" in caplog.text


def test_graph_buckets_are_powers_of_two_covering_the_batch_limit():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(16) == [1, 2, 4, 8, 16]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 32]
    assert [bucket_for(n, bucket_sizes(20)) for n in (1, 3, 8, 9, 17, 32)] == [1, 4, 8, 16, 32, 32]
    with pytest.raises(ValueError, match="exceeds"):
        bucket_for(33, bucket_sizes(20))


def test_cuda_graphs_setting_falls_back_to_eager_off_cuda(tiny_checkpoint):
    eager = load_for_inference(tiny_checkpoint, EngineOptions(device="cpu"))
    graphed = load_for_inference(tiny_checkpoint, EngineOptions(device="cpu", cuda_graphs=True, max_batch_size=4))
    assert not graphed.graphed
    crops = torch.randint(0, 255, (5, 64, 64, 3), dtype=torch.uint8)
    inverse = torch.eye(2, 3).expand(5, 2, 3)
    torch.testing.assert_close(graphed(crops, inverse).points, eager(crops, inverse).points)


def test_graph_runner_pads_to_its_bucket_chunks_and_unpads():
    """The bucketing logic of CudaGraphs, with its capture replaced by a recorder (CPU has no graphs)."""
    calls: list[int] = []

    def heads(crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        calls.append(len(crops))
        total = crops.float().sum(dim=(1, 2, 3))
        return total, total * 2, total[:, None].expand(-1, 3), total + 1

    runner = CudaGraphs(heads, (2, 2, 3), torch.device("cpu"), max_batch_size=4)

    class Replay:
        def __init__(self, static: torch.Tensor, outputs: list[torch.Tensor]) -> None:
            self.static, self.outputs = static, outputs

        def replay(self) -> None:
            for out, new in zip(self.outputs, heads(self.static), strict=True):
                out.copy_(new)

    def capture(size: int):
        static = torch.zeros((size, 2, 2, 3), dtype=torch.uint8)
        outputs = [t.clone() for t in heads(static)]
        return Replay(static, outputs), static, tuple(outputs)

    runner._capture = capture  # type: ignore[method-assign]
    crops = torch.arange(7).view(7, 1, 1, 1).expand(7, 2, 2, 3).to(torch.uint8)
    total, double, wide, plus = runner(crops)
    torch.testing.assert_close(total, crops.float().sum(dim=(1, 2, 3)))
    assert double.shape == (7,)
    assert wide.shape == (7, 3)
    assert plus.shape == (7,)
    assert sorted(runner.graphs) == [4]  # 7 faces: one full bucket of 4, then 3 padded to 4
    small = runner(crops[:1])[0]
    assert small.tolist() == [0.0]
    assert sorted(runner.graphs) == [1, 4]


def test_decode_blur_comes_from_the_metadata_and_is_validated():
    assert decode_blur_from_metadata({}) == DECODE_BLUR_SIGMA  # a checkpoint without fits: the codec's default
    assert decode_blur_from_metadata({"decode_blur_sigma": 0}) == 0.0
    assert decode_blur_from_metadata({"decode_blur_sigma": 1.5}) == 1.5
    for bad in (float("nan"), float("inf"), -1.0, "wide", None):
        with pytest.raises(CheckpointError, match="decode_blur_sigma"):
            decode_blur_from_metadata({"decode_blur_sigma": bad})


class _HostTensorWatch(TorchDispatchMode):
    """Records op inputs that no earlier op made and that are not in ``known``: tensors built from host data
    (numpy arrays, Python lists) during the call. On CUDA each one is a host-to-device copy, which a CUDA graph's
    capture refuses; CPU has no graphs, so the captured function is checked for such tensors here instead."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.seen = {t.untyped_storage().data_ptr() for t in known}
        self.strangers: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for value in pytree.tree_leaves((args, kwargs or {})):
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() not in self.seen:
                self.strangers.append(f"{func} {tuple(value.shape)}")
                self.seen.add(value.untyped_storage().data_ptr())
        out = func(*args, **(kwargs or {}))
        for value in pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor):
                self.seen.add(value.untyped_storage().data_ptr())
        return out


@pytest.mark.parametrize("flip_test", [False, True])
def test_graph_captured_heads_copy_nothing_from_the_host(tiny_checkpoint, flip_test):
    """What a CUDA graph captures (decode's smoothing and the flip's landmark permutation included) uses only its
    input, the weights and constants the engine made at load."""
    engine = load_for_inference(tiny_checkpoint, EngineOptions(device="cpu", precision="fp32", flip_test=flip_test))
    assert engine.decode_blur > 0  # the smoothing is on, so its matrices are in play
    crops = torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8)
    known = [crops, *engine.net.parameters(), *engine.net.buffers(), *(engine._blur or ()), engine._mirror]
    with torch.inference_mode(), _HostTensorWatch(known) as watch:
        heads = engine._heads(crops)
    assert watch.strangers == []
    eager = load_for_inference(tiny_checkpoint, EngineOptions(device="cpu", precision="fp32", flip_test=flip_test))
    eager._blur = None  # the per-call matrices: same numbers
    with torch.inference_mode():
        for a, b in zip(heads, eager._heads(crops), strict=True):
            torch.testing.assert_close(a, b)

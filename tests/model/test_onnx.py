"""The exported ONNX model: equal to PyTorch on real faces, served without torch, runnable from the README."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[dev])")
pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install -e .[dev])")

from model.artifacts import SHIPPED_CHECKPOINT, CheckpointError  # noqa: E402
from model.engine import EngineOptions
from model.inference import load_for_inference  # noqa: E402
from model.onnx_engine import OnnxEngine  # noqa: E402
from model.pipeline import Pipeline, PipelineOptions, caller_faces  # noqa: E402
from tests.conftest import SHARED_300W  # noqa: E402
from tests.support.server import ROOT  # noqa: E402
from training.export import MAX_POINT_PX, check_crops, export, max_difference  # noqa: E402

PORTRAIT = ROOT / "tests" / "data" / "astronaut.jpg"
NO_TORCH = "import sys; sys.modules['torch'] = None  # any import of torch now fails\n"


@pytest.fixture(scope="module")
def torch_engine():
    return load_for_inference(SHIPPED_CHECKPOINT, EngineOptions(device="cpu", precision="fp32", cuda_graphs=False))


@pytest.fixture(scope="module")
def onnx_path(torch_engine, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export(torch_engine, path)
    return path


def test_onnx_runtime_equals_pytorch_on_real_faces(torch_engine, onnx_path):
    engine = OnnxEngine(onnx_path)
    assert engine.version == torch_engine.version
    assert engine.config == torch_engine.config
    assert engine.convention_name == torch_engine.convention_name  # baked into the graph, named in its metadata
    other = "none" if engine.convention_name != "none" else "aflw2000"
    with pytest.raises(CheckpointError, match="training.export --convention"):
        OnnxEngine(onnx_path, convention=other)
    data = SHARED_300W if (SHARED_300W / "val.txt").is_file() else None
    diff = max_difference(torch_engine, engine, check_crops(engine.config.input_size, data, count=48))
    assert diff["points_px_p999"] < 0.01
    assert diff["points_px"] < MAX_POINT_PX  # an arg-max near-tie may move one point a little (max_difference)
    assert diff["confidence"] < 1e-4
    # The whole path on the bundled portrait: YuNet, both passes, batches of several sizes.
    from model.imaging import decode_image

    image = decode_image(PORTRAIT.read_bytes(), 10**8)
    pipeline = Pipeline(PipelineOptions(), engine.config.input_size, None)
    faces = caller_faces([(150.0, 60.0, 330.0, 280.0), (160.0, 70.0, 320.0, 270.0), (100.0, 40.0, 380.0, 330.0)])
    a = pipeline.run(image, torch_engine.infer, faces).faces
    b = pipeline.run(image, engine.infer, faces).faces
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_allclose(fa.landmarks.points, fb.landmarks.points, atol=0.01)


def test_a_bad_onnx_file_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*training.export"):
        OnnxEngine(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        OnnxEngine(tmp_path / "bad.onnx")


def test_the_service_on_onnxruntime_needs_no_torch_and_answers_like_torch(onnx_path, tiny_checkpoint):
    script = (
        NO_TORCH
        + f"""
import json
from fastapi.testclient import TestClient
from app.main import create_app
from app.startup import startup_problem
from app.settings import Settings
settings = Settings(runtime="onnxruntime", onnx_model={str(onnx_path)!r}, warmup_batches=1)
assert startup_problem(settings) is None, startup_problem(settings)
with TestClient(create_app(settings, handle_signals=False)) as client:
    while client.get("/health/ready").status_code != 200:
        pass
    data = open({str(PORTRAIT)!r}, "rb").read()
    out = [client.post("/landmarks", files={{"image": ("a.jpg", data)}}, data=form).json()
           for form in ({{}}, {{"boxes": "[[150, 60, 330, 280]]"}})]
    out.append(client.get("/v1/model").json())
print(json.dumps(out))
"""
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    detected, boxed, card = json.loads(result.stdout.strip().splitlines()[-1])
    assert card["device"] == "cpu"
    assert card["precision"] == "fp32"
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.app.conftest import make_settings, wait_ready

    settings = make_settings(SHIPPED_CHECKPOINT, precision="fp32", runtime="torch")
    with TestClient(create_app(settings, handle_signals=False)) as client:
        wait_ready(client)
        data = PORTRAIT.read_bytes()
        served = [
            client.post("/landmarks", files={"image": ("a.jpg", data)}, data=form).json()
            for form in ({}, {"boxes": "[[150, 60, 330, 280]]"})
        ]
    for ours, theirs in zip((detected, boxed), served, strict=True):
        assert len(ours["faces"]) == len(theirs["faces"]) == 1
        np.testing.assert_allclose(ours["faces"][0]["landmarks"], theirs["faces"][0]["landmarks"], atol=0.01)
        np.testing.assert_allclose(ours["faces"][0]["confidence"], theirs["faces"][0]["confidence"], atol=1e-3)


def test_the_readme_example_runs_with_onnxruntime_numpy_and_opencv_only(onnx_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- onnx-example -->\n```python\n(.*?)```", readme, re.S)
    assert code is not None, "the README's ONNX example is marked with <!-- onnx-example -->"
    script = NO_TORCH + code.group(1).replace("model/weights/dsc_landmarks_cpu.onnx", str(onnx_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    points = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    assert points.shape == (68, 2)
    assert (points[:, 0] > 100).all()  # on the face of the portrait
    assert (points[:, 0] < 380).all()
    assert (points[:, 1] > 40).all()
    assert (points[:, 1] < 340).all()

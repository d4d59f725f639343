import dataclasses
import os
import socket

import cv2
import pytest
import torch
from fastapi.testclient import TestClient

from app.host import share_cores
from app.main import create_app
from app.startup import StartupError
from model.checkpoint import save_checkpoint
from model.network import build_model
from tests.app.conftest import make_settings
from tests.conftest import tiny_config


def test_corrupt_checkpoint_refuses_to_start(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    app = create_app(make_settings(bad), handle_signals=False)
    with pytest.raises(StartupError, match="^LANDMARKS_CHECKPOINT: .*corrupt"), TestClient(app):
        pass


def test_checkpoint_whose_weights_do_not_fit_refuses_to_start(tmp_path):
    config = tiny_config()
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, build_model(dataclasses.replace(config, dsc_width=16)), config)
    with pytest.raises(StartupError, match="do not fit"), TestClient(create_app(make_settings(path))):
        pass


def test_invalid_settings_exit_with_a_message(monkeypatch):
    monkeypatch.setenv("LANDMARKS_MAX_BATCH_SIZE", "0")
    monkeypatch.setenv("LANDMARKS_DEVICE", "tpu")
    with pytest.raises(SystemExit, match=r"(?s)LANDMARKS_DEVICE: .*cuda:N.*LANDMARKS_MAX_BATCH_SIZE: .*1"):
        create_app()


def test_the_replaced_second_pass_setting_stops_the_start_and_names_its_successor(monkeypatch):
    monkeypatch.setenv("LANDMARKS_SECOND_PASS", "false")
    with pytest.raises(SystemExit, match="LANDMARKS_SECOND_PASS was replaced by LANDMARKS_PASSES: true is 2 passes"):
        create_app()


def test_a_metrics_port_in_use_stops_the_start_with_one_line(tiny_checkpoint, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("LANDMARKS_CHECKPOINT", str(tiny_checkpoint))
        monkeypatch.setenv("LANDMARKS_METRICS_PORT", str(port))
        monkeypatch.setenv("LANDMARKS_METRICS_HOST", "127.0.0.1")
        with pytest.raises(SystemExit, match=rf"^cannot start: LANDMARKS_METRICS_PORT={port}: cannot listen on 127"):
            create_app()
    monkeypatch.setenv("LANDMARKS_METRICS_HOST", "no-such-host.invalid")
    with pytest.raises(SystemExit, match=r"^cannot start: LANDMARKS_METRICS_PORT=.*no-such-host.invalid"):
        create_app()


def test_worker_processes_share_the_cores_between_their_thread_pools(tiny_checkpoint, monkeypatch):
    before = torch.get_num_threads(), cv2.getNumThreads()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    try:
        share_cores(make_settings(tiny_checkpoint, workers=4))
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (2, 2)  # 8 cores / 4 workers
        share_cores(make_settings(tiny_checkpoint, workers=4, torch_threads=1, opencv_threads=3))
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 3)  # explicit settings win
        torch.set_num_threads(5)
        share_cores(make_settings(tiny_checkpoint))
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (5, 8)  # one worker: torch's own default stays
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_a_bad_head_model_stops_the_start_with_one_line(tiny_checkpoint, tmp_path):
    from app.startup import startup_problem

    bad = tmp_path / "head.npz"
    bad.write_bytes(b"not numpy")
    problem = startup_problem(make_settings(tiny_checkpoint, head_model=str(bad)))
    assert problem is not None
    assert problem.startswith("LANDMARKS_HEAD_MODEL: ")
    assert "none" in problem
    assert startup_problem(make_settings(tiny_checkpoint, head_model="none")) is None


def test_the_server_path_reads_each_artefact_once(tiny_checkpoint, monkeypatch):
    """Checked, loaded and served: the checkpoint, YuNet and the head model are each read from disk once, however
    many threads detect faces."""
    import collections
    from pathlib import Path

    import numpy as np

    from model.detector import YUNET_PATH
    from model.pose import DEFAULT_HEAD_MODEL
    from tests.app.conftest import wait_ready

    reads: collections.Counter[str] = collections.Counter()
    names = {str(tiny_checkpoint): "checkpoint", str(YUNET_PATH): "yunet", str(DEFAULT_HEAD_MODEL): "head"}

    def counting(fn):  # noqa: ANN001, ANN202
        def wrapper(target, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            reads[names.get(str(target), "other")] += 1
            return fn(target, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch, "load", counting(torch.load))
    monkeypatch.setattr(np, "load", counting(np.load))
    monkeypatch.setattr(Path, "read_bytes", counting(Path.read_bytes))
    for name, value in {"CHECKPOINT": tiny_checkpoint, "DEVICE": "cpu", "WARMUP_BATCHES": 1,
                        "PREPROCESS_THREADS": 2}.items():  # fmt: skip
        monkeypatch.setenv(f"LANDMARKS_{name}", str(value))
    photo = (Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg").read_bytes()
    reads.clear()
    with TestClient(create_app(handle_signals=False)) as client:
        wait_ready(client)
        for _ in range(4):  # concurrent-enough requests: both pre-processing threads detect
            assert client.post("/landmarks", files={"image": ("a.jpg", photo)}).status_code == 200
    assert reads["checkpoint"] == 1
    assert reads["yunet"] == 1
    assert reads["head"] == 1


def test_the_served_convention_is_on_the_model_card_and_an_unknown_one_stops_the_start(tmp_path):
    """LANDMARKS_CONVENTION picks one the checkpoint stores (the card says which); another is a one-line refusal."""
    from app.startup import startup_problem
    from model.checkpoint import save_checkpoint
    from model.network import build_model
    from tests.app.conftest import open_client
    from tests.conftest import tiny_config

    path = tmp_path / "conv.pt"
    offsets = {"300w": [[0.01, 0.0]] * 68, "aflw2000": [[-0.01, 0.0]] * 68}
    meta = {"version": "conv-test", "conventions": {"default": "300w", "offsets": offsets}}
    save_checkpoint(path, build_model(tiny_config()), tiny_config(), meta)
    with open_client(path) as client:
        assert client.get("/v1/model").json()["convention"] == "300w"
    with open_client(path, convention="aflw2000") as client:
        assert client.get("/v1/model").json()["convention"] == "aflw2000"
    problem = startup_problem(make_settings(path, convention="helen"))
    assert problem is not None
    assert problem.startswith("LANDMARKS_CONVENTION: the checkpoint holds no annotation convention 'helen'")

import dataclasses

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from model.checkpoint import CheckpointError, save_checkpoint
from model.network import build_model
from tests.app.conftest import make_settings
from tests.conftest import tiny_config


def test_corrupt_checkpoint_refuses_to_start(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    app = create_app(make_settings(bad), handle_signals=False)
    with pytest.raises(CheckpointError, match="corrupt"), TestClient(app):
        pass


def test_checkpoint_whose_weights_do_not_fit_refuses_to_start(tmp_path):
    config = tiny_config()
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, build_model(dataclasses.replace(config, dsc_width=16)), config)
    with pytest.raises(CheckpointError, match="do not fit"), TestClient(create_app(make_settings(path))):
        pass


def test_invalid_settings_exit_with_a_message(monkeypatch):
    monkeypatch.setenv("LANDMARKS_MAX_BATCH_SIZE", "0")
    monkeypatch.setenv("LANDMARKS_DEVICE", "tpu")
    with pytest.raises(SystemExit, match=r"(?s)LANDMARKS_DEVICE: .*cuda:N.*LANDMARKS_MAX_BATCH_SIZE: .*1"):
        create_app()

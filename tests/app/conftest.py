from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from tests.conftest import draw_face


def make_settings(checkpoint: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"checkpoint": checkpoint, "device": "cpu", "max_wait_ms": 2.0, "warmup_batches": 1}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("service never became ready")


@contextlib.contextmanager
def open_client(checkpoint: Path, **overrides: object) -> Iterator[TestClient]:
    app = create_app(make_settings(checkpoint, **overrides), handle_signals=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def client(tiny_checkpoint: Path) -> Iterator[TestClient]:
    with open_client(tiny_checkpoint) as c:
        yield c


def png_bytes(image: np.ndarray, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def face_png() -> tuple[bytes, np.ndarray]:
    image, points = draw_face(256, seed=1)
    return png_bytes(image), points

"""Build both container images with podman and run them, as an outside engineer would, offline.

The torch image (default target) and the slim ONNX Runtime image (``--target slim``) must each answer
``POST /landmarks`` with 68 points on a real photo, run as a non-root user, pass their health check, and exit 0
after draining on SIGTERM; the slim one must hold no torch. Podman here runs health checks through systemd timers,
which are absent, so the test runs the check. Building uses :mod:`benchmarks.images` (debootstrap base, loopback
wheelhouse).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images
from tests.support.server import ROOT

PORTRAIT = ROOT / "tests" / "data" / "astronaut.jpg"
SKIP = images.podman_problem()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    folder: Path = tmp_path_factory.mktemp("podman")
    env = images.podman_env(folder)
    base = images.base_image(env, folder)
    (folder / "wheels").mkdir()
    with images.wheelhouse(folder / "wheels") as wheels:
        tags = {target: images.build(env, target, base, wheels) for target in ("runtime", "slim")}
    yield env, tags
    for tag in tags.values():
        subprocess.run(["podman", "rmi", "-f", tag], env=env, capture_output=True, timeout=120)


def landmarks(base: str) -> list[dict[str, object]]:
    boundary = "imageboundary1"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + PORTRAIT.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"{base}/landmarks", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        faces: list[dict[str, object]] = json.loads(response.read())["faces"]
    return faces


@pytest.mark.parametrize("target", ["runtime", "slim"])
def test_image_builds_serves_as_non_root_passes_its_health_check_and_drains(built, target):
    env, tags = built
    with images.container(env, tags[target]) as (name, base, _):
        faces = landmarks(base)
        assert len(faces) == 1
        assert len(faces[0]["landmarks"]) == 68  # type: ignore[arg-type]
        assert images.run(["podman", "exec", name, "id", "-u"], env, 60).stdout.strip() not in ("", "0")
        images.run(["podman", "healthcheck", "run", name], env, 60)  # no systemd timers here: run it ourselves
        with urllib.request.urlopen(f"{base}/v1/model", timeout=10) as response:
            card = json.loads(response.read())
        probe = ["podman", "exec", name, "python", "-c", "import importlib.util as u; print(u.find_spec('torch'))"]
        has_torch = images.run(probe, env, 60).stdout.strip() != "None"
        if target == "slim":
            assert not has_torch  # the slim image serves without PyTorch
            assert card["precision"] == "fp32"
        else:
            assert has_torch
        started = time.monotonic()
        images.run(["podman", "stop", "-t", "60", name], env, 120)  # SIGTERM, then wait
        assert time.monotonic() - started < 50  # drained well inside the drain + graceful timeouts
        state = images.run(["podman", "inspect", name, "--format", "{{.State.ExitCode}}"], env, 60).stdout.strip()
        assert state == "0"
        logs = subprocess.run(["podman", "logs", name], env=env, capture_output=True, text=True, timeout=60)
        assert "drain complete" in logs.stdout + logs.stderr

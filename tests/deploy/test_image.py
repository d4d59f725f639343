"""Build the container image with podman and run it, as an outside engineer would, offline.

The base image is Debian bookworm made locally with debootstrap (python3, venv, pip) and imported into podman, so
nothing is pulled from a registry; the Python packages come from a wheelhouse that pip downloads on the host
through ``constraints.txt`` (the lock the README and CI use) and that is served to the build on loopback. The
container must answer ``POST /landmarks`` with 68 points on a real photo, run as a non-root user, pass its health
check, and exit 0 after draining on SIGTERM. Podman here cannot raise resource limits, so they are pinned in a
``containers.conf``; it runs health checks through systemd timers, which are absent, so the test runs the check.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from benchmarks.server import ROOT, free_port, http_status

BASE_IMAGE = "localhost/dsc-base:bookworm"
IMAGE = "localhost/dsc-landmarks:test"
PORTRAIT = ROOT / "tests" / "data" / "astronaut.jpg"


def _podman_usable() -> str | None:
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        return "podman and debootstrap are not installed (apt-get install podman debootstrap)"
    if os.geteuid() != 0:
        return "building a debootstrap base image needs root"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=60)
    return None if info.returncode == 0 else f"podman cannot run here: {info.stderr.strip()[:200]}"


SKIP = _podman_usable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


def run(cmd: list[str], env: dict[str, str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{' '.join(cmd[:3])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = min(32768, resource.getrlimit(resource.RLIMIT_NPROC)[0])
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={soft}:{hard}", "nproc={nproc}:{nproc}"]\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def base_image(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=podman_env).returncode == 0:
        return BASE_IMAGE
    rootfs = tmp_path_factory.mktemp("rootfs")
    packages = "python3,python3-venv,python3-pip,ca-certificates"
    run(["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(rootfs),
         "http://deb.debian.org/debian"], podman_env, 900)  # fmt: skip
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run(["podman", "import", "-", BASE_IMAGE], podman_env, 300, stdin=tar.stdout)
    tar.wait()
    return BASE_IMAGE


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image's packages, resolved through constraints.txt on the host and served on loopback."""
    folder = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "download", "-q", "-d", str(folder), "-c", str(ROOT / "constraints.txt"),
         "torch==2.13.0", f"{ROOT}[serve]", "setuptools>=68", "wheel"], dict(os.environ), 900)  # fmt: skip
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_image_builds_serves_as_non_root_passes_its_health_check_and_drains(podman_env, base_image, wheelhouse):
    run(
        ["podman", "build", "--format", "docker", "--network", "host", "-f", "docker/Dockerfile",
         "--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", "PIP_NO_INDEX=1",
         "--build-arg", f"PIP_FIND_LINKS={wheelhouse}", "--build-arg", "PIP_TRUSTED_HOST=127.0.0.1",
         "-t", IMAGE, "."],
        podman_env, 1200, cwd=ROOT,
    )  # fmt: skip
    port = free_port()
    name = f"dsc-landmarks-test-{port}"
    run(["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", IMAGE], podman_env, 120)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while http_status(f"{base}/health/ready") != 200:
            assert time.monotonic() < deadline, run(["podman", "logs", name], podman_env, 30).stderr[-3000:]
            time.sleep(0.5)
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
            faces = json.loads(response.read())["faces"]
        assert len(faces) == 1
        assert len(faces[0]["landmarks"]) == 68
        assert run(["podman", "exec", name, "id", "-u"], podman_env, 60).stdout.strip() not in ("", "0")
        run(["podman", "healthcheck", "run", name], podman_env, 60)  # no systemd timers here: run it ourselves
        started = time.monotonic()
        run(["podman", "stop", "-t", "60", name], podman_env, 120)  # SIGTERM, then wait
        assert time.monotonic() - started < 50  # drained well inside the drain + graceful timeouts
        state = run(["podman", "inspect", name, "--format", "{{.State.ExitCode}}"], podman_env, 60).stdout.strip()
        assert state == "0"
        logs = subprocess.run(["podman", "logs", name], env=podman_env, capture_output=True, text=True, timeout=60)
        assert "drain complete" in logs.stdout + logs.stderr
    finally:
        subprocess.run(["podman", "rm", "-f", name], env=podman_env, capture_output=True, timeout=120)
        subprocess.run(["podman", "rmi", "-f", IMAGE], env=podman_env, capture_output=True, timeout=120)

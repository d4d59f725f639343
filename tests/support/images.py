"""The container images, built and run offline with podman: shared by ``tests/deploy/test_image.py`` and
``benchmarks.images`` (each image's size and its time from ``podman run`` to ``/health/ready``).

The base image is Debian bookworm made locally with debootstrap (python3, venv, pip) and imported into podman, so
nothing is pulled from a registry; the Python packages come from a wheelhouse that pip downloads on the host
through ``constraints.txt`` and that is served to the build on loopback.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.server import ROOT, free_port, http_status

BASE_IMAGE = "localhost/dsc-base:bookworm"
TARGETS = {"runtime": "localhost/dsc-landmarks:test", "slim": "localhost/dsc-landmarks:test-slim"}


def podman_problem() -> str | None:
    """Why podman cannot build here (None when it can)."""
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        return "podman and debootstrap are not installed (apt-get install podman debootstrap)"
    if os.geteuid() != 0:
        return "building a debootstrap base image needs root"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=60)
    return None if info.returncode == 0 else f"podman cannot run here: {info.stderr.strip()[:200]}"


def run(cmd: list[str], env: dict[str, str], timeout: float, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def podman_env(folder: Path) -> dict[str, str]:
    """Podman here cannot raise resource limits: pin them in a containers.conf."""
    conf = folder / "containers.conf"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = min(32768, resource.getrlimit(resource.RLIMIT_NPROC)[0])
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={soft}:{hard}", "nproc={nproc}:{nproc}"]\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def base_image(env: dict[str, str], folder: Path) -> str:
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode == 0:
        return BASE_IMAGE
    rootfs = folder / "rootfs"
    packages = "python3,python3-venv,python3-pip,ca-certificates"
    run(["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(rootfs),
         "http://deb.debian.org/debian"], env, 900)  # fmt: skip
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run(["podman", "import", "-", BASE_IMAGE], env, 300, stdin=tar.stdout)
    tar.wait()
    return BASE_IMAGE


@contextlib.contextmanager
def wheelhouse(folder: Path) -> Iterator[str]:
    """Both images' packages, resolved through constraints.txt on the host and served on loopback."""
    run([sys.executable, "-m", "pip", "download", "-q", "-d", str(folder), "-c", str(ROOT / "constraints.txt"),
         "torch==2.13.0", f"{ROOT}[serve,serve-onnx]", "onnx", "onnxscript", "setuptools>=68", "wheel"],
        dict(os.environ), 900)  # fmt: skip
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def build(env: dict[str, str], target: str, base: str, wheels: str) -> str:
    """Build one target of docker/Dockerfile offline; returns its tag."""
    run(["podman", "build", "--format", "docker", "--network", "host", "-f", "docker/Dockerfile", "--target", target,
         "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "PIP_NO_INDEX=1",
         "--build-arg", f"PIP_FIND_LINKS={wheels}", "--build-arg", "PIP_TRUSTED_HOST=127.0.0.1",
         "-t", TARGETS[target], "."], env, 1800, cwd=ROOT)  # fmt: skip
    return TARGETS[target]


def image_mb(env: dict[str, str], tag: str) -> float:
    return int(run(["podman", "image", "inspect", tag, "--format", "{{.Size}}"], env, 60).stdout.strip()) / 1e6


@contextlib.contextmanager
def container(env: dict[str, str], tag: str, *extra: str) -> Iterator[tuple[str, str, float]]:
    """Run an image on a loopback port; yield (name, base URL, seconds from ``podman run`` to ready)."""
    port = free_port()
    name = f"dsc-landmarks-{port}"
    started = time.monotonic()
    run(["podman", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", *extra, tag], env, 120)
    base = f"http://127.0.0.1:{port}"
    try:
        while http_status(f"{base}/health/ready") != 200:
            if time.monotonic() - started > 180:
                logs = subprocess.run(["podman", "logs", name], env=env, capture_output=True, text=True, timeout=30)
                raise RuntimeError(f"{tag} never became ready:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
            time.sleep(0.1)
        yield name, base, time.monotonic() - started
    finally:
        subprocess.run(["podman", "rm", "-f", name], env=env, capture_output=True, timeout=120)

"""The container images, built and run offline with podman: shared by ``tests/deploy/test_image.py`` and this
benchmark, which measures each image's size and its time from ``podman run`` to ``/health/ready``.

    python -m benchmarks.images [--runs 3] [--out benchmarks/results/images.md]

The base image is Debian bookworm made locally with debootstrap (python3, venv, pip) and imported into podman, so
nothing is pulled from a registry; the Python packages come from a wheelhouse that pip downloads on the host
through ``constraints.txt`` and that is served to the build on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import machine, publish, table
from benchmarks.server import ROOT, free_port, http_status

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


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="container starts per image (median reported)")
    p.add_argument("--out", type=Path, default=None)
    return p


def main(args: argparse.Namespace) -> str:
    problem = podman_problem()
    if problem:
        raise SystemExit(problem)
    rows: list[list[object]] = []
    measured: dict[str, tuple[float, float]] = {}  # target: (MB, median ready s)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = podman_env(folder)
        base = base_image(env, folder)
        (folder / "wheels").mkdir()
        with wheelhouse(folder / "wheels") as wheels:
            tags = {target: build(env, target, base, wheels) for target in ("runtime", "slim")}
        sizes = {target: image_mb(env, tag) for target, tag in tags.items()}
        for target, tag in tags.items():
            times = []
            for _ in range(args.runs):
                with container(env, tag) as (_, _, ready_s):
                    times.append(ready_s)
            measured[target] = (sizes[target], statistics.median(times))
            rows.append([target, tag, f"{sizes[target]:.0f}", f"{statistics.median(times):.1f}",
                         " / ".join(f"{t:.1f}" for t in times)])  # fmt: skip
            print(rows[-1], flush=True)
    (torch_mb, torch_s), (slim_mb, slim_s) = measured["runtime"], measured["slim"]
    lines = [
        "# Container images: size and time to ready",
        "",
        f"Machine: {machine()}. podman, images built offline from `docker/Dockerfile` on a local Debian bookworm "
        f"base; time from `podman run` to the first 200 from `/health/ready` (model loaded and warmed up), "
        f"{args.runs} starts each.",
        "",
        table(["target", "image", "size MB", "ready s (median)", "each start, s"], rows),
        "",
        f"Slim / torch: size {slim_mb / torch_mb:.2f}×, time to ready {slim_s / torch_s:.2f}×.",
        "",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""Run the real service (``python -m app.server`` in a subprocess) on a free loopback port, for the benchmarks and
the integration tests. Only the standard library: the benchmarks talk to the service over HTTP, never import it."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (uvicorn's supervisor and its workers), from /proc."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += process_tree(int(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of these processes (all their threads), from /proc."""
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / float(os.sysconf("SC_CLK_TCK"))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (all their threads), from /proc."""
    return cpu_seconds(process_tree(pid))


def host_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole host so far, from /proc/stat; differences give the busy share."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


@contextlib.contextmanager
def running_server(
    checkpoint: Path, log_path: Path, module: str = "app.server", **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start the server as ``dsc-landmarks-serve`` does (``module``: ``tests.support.stand_in`` for the network
    stand-in); wait until /health/ready is 200; yield (base URL, process)."""
    port = free_port()
    env = {
        **os.environ,
        "LANDMARKS_CHECKPOINT": str(checkpoint),
        "LANDMARKS_DEVICE": "cpu",
        "LANDMARKS_TORCH_THREADS": "1",
        **{f"LANDMARKS_{k.upper()}": v for k, v in settings.items()},
    }
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # several CUDA workers start together
        while http_status(f"{base}/health/ready") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


READY_LINE = re.compile(r"process \d+ ready \(warm-up")  # logged by each server process once it has warmed up


def wait_for_workers(log: Path, workers: int, timeout_s: float) -> None:
    """``/health/ready`` answers from the first worker that is up; wait until every worker has warmed up."""
    deadline = time.monotonic() + timeout_s
    while len(READY_LINE.findall(log.read_text(errors="replace"))) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {workers} workers got ready:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)

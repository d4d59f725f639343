"""The Ray Serve app on a real two-node cluster on this machine (head 127.0.0.2, worker 127.0.0.3; loopback only,
usage reporting off, the cluster stopped at the end): the same answers as the single-process service, the same
errors, and nothing lost when a model replica and then the worker node die under load."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import png_bytes, wait_ready
from tests.conftest import draw_face
from tests.support.ray_cluster import (
    HEAD_IP,
    WORKER_IP,
    LocalCluster,
    fault_drill,
    free_port,
    loopback_config,
    ray_env,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the cluster extra (ray[serve])"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes in /proc"),
]

PHOTO = Path(__file__).resolve().parents[1] / "data" / "astronaut.jpg"
DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dashboards" / "dsc-landmarks.json"
MODEL = "ray::ServeReplica:landmarks:LandmarkModel"
RECOVERY_S = 10.0  # after a kill, the cluster answers 200 again within this (measured: under 1 s)
REQUEST_TIMEOUT_S = 20.0  # LANDMARKS_REQUEST_TIMEOUT_S on both: a request past it is a hang


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("ray"))
    try:
        cluster.start()
        extra = {"LANDMARKS_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S)}
        cluster.deploy(loopback_config(free_port(HEAD_IP), extra_env=extra), timeout_s=420)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def single() -> Iterator[TestClient]:
    """The single-process service on the same checkpoint, settings and threads."""
    settings = Settings(torch_threads=1, opencv_threads=1, request_timeout_s=REQUEST_TIMEOUT_S)
    with TestClient(create_app(settings, handle_signals=False), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def _uploads() -> list[tuple[str, dict[str, tuple[str, bytes, str]], dict[str, str]]]:
    drawn, _ = draw_face(256, seed=3)
    photo = PHOTO.read_bytes()
    return [
        ("photo, detector + second pass", {"image": ("a.jpg", photo, "image/jpeg")}, {}),
        ("photo, caller box", {"image": ("a.jpg", photo, "image/jpeg")}, {"boxes": "[[178, 87, 272, 177]]"}),
        ("drawn face, two boxes", {"image": ("d.png", png_bytes(drawn), "image/png")},
         {"boxes": "[[40, 40, 216, 216], [60, 50, 200, 220]]"}),
    ]  # fmt: skip


def test_a_client_without_the_token_is_refused(cluster: LocalCluster) -> None:
    """Token authentication is on: the token opens the cluster, a wrong or missing one does not."""
    ray = str(Path(sys.executable).with_name("ray"))
    status = [ray, "status", "--address", cluster.address]
    env = ray_env(cluster.workdir)
    assert subprocess.run(status, env=env, capture_output=True, timeout=60).returncode == 0
    wrong = {**env, "RAY_AUTH_TOKEN": "not-the-token"}
    without = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    for other in (wrong, without):
        refused = subprocess.run(status, env=other, capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "Authentication token is missing or incorrect" in refused.stdout + refused.stderr


def test_landmarks_equal_the_single_process_service(cluster: LocalCluster, single: TestClient) -> None:
    for name, files, data in _uploads():
        remote = httpx.post(cluster.url + "/landmarks", files=files, data=data, timeout=60)
        local = single.post("/landmarks", files=files, data=data)
        assert remote.status_code == local.status_code == 200, (name, remote.text)
        got, want = remote.json(), local.json()
        assert len(got["faces"]) == len(want["faces"]) > 0, name
        for g, w in zip(got["faces"], want["faces"], strict=True):
            np.testing.assert_allclose(g["box"], w["box"], atol=1e-3, err_msg=name)
            np.testing.assert_allclose(g["landmarks"], w["landmarks"], atol=1e-3, err_msg=name)
            np.testing.assert_allclose(g["confidence"], w["confidence"], atol=1e-3, err_msg=name)
        assert got["model"] == want["model"]
    assert httpx.get(cluster.url + "/v1/model").json() == single.get("/v1/model").json()
    assert httpx.get(cluster.url + "/health/ready").json() == {"status": "ready"}


def test_the_service_metrics_reach_rays_exporter(cluster: LocalCluster) -> None:
    """The service's latency and batch metrics, under Ray's prefix, on the nodes' metrics ports (Prometheus
    scrapes these; Ray reports them every few seconds), and the Ray Serve series the Grafana dashboard reads."""
    httpx.post(cluster.url + "/landmarks", files={"image": ("a.jpg", PHOTO.read_bytes(), "image/jpeg")}, timeout=60)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    ray_serve = set(re.findall(r"\bray_serve_[a-z_]+", queries))
    assert ray_serve, "the dashboard has no Ray Serve panel"
    wanted = (
        "ray_landmarks_request_duration_seconds_bucket",
        "ray_landmarks_batch_size_bucket",
        "ray_landmarks_forwards_total",
        "ray_landmarks_forward_faces_total",
        "ray_landmarks_model_info",
        *sorted(ray_serve),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = cluster.metrics(HEAD_IP) + cluster.metrics(WORKER_IP)
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    assert all(name in text for name in wanted), [name for name in wanted if name not in text]


def test_bad_input_gets_the_same_answers(cluster: LocalCluster, single: TestClient) -> None:
    photo = PHOTO.read_bytes()
    cases: list[tuple[str, dict[str, tuple[str, bytes, str]], dict[str, str]]] = [
        ("not an image", {"image": ("a.txt", b"hello, not pixels", "text/plain")}, {}),
        ("empty file", {"image": ("a.jpg", b"", "image/jpeg")}, {}),
        ("truncated jpeg", {"image": ("a.jpg", photo[:300], "image/jpeg")}, {}),
        ("no image field", {"photo": ("a.jpg", photo, "image/jpeg")}, {}),
        ("boxes not json", {"image": ("a.jpg", photo, "image/jpeg")}, {"boxes": "[[1, 2"}),
        ("box outside", {"image": ("a.jpg", photo, "image/jpeg")}, {"boxes": "[[900, 900, 950, 950]]"}),
        ("max_faces 0", {"image": ("a.jpg", photo, "image/jpeg")}, {"max_faces": "0"}),
    ]
    for name, files, data in cases:
        remote = httpx.post(cluster.url + "/landmarks", files=files, data=data, timeout=60)
        local = single.post("/landmarks", files=files, data=data)
        assert 400 <= local.status_code < 500, (name, local.text)
        assert (remote.status_code, remote.json()) == (local.status_code, local.json()), name
    remote = httpx.get(cluster.url + "/no/such/route")
    assert (remote.status_code, remote.json()) == (404, single.get("/no/such/route").json())
    remote = httpx.post(cluster.url + "/landmarks", content=b"x" * 100, headers={"content-type": "text/plain"})
    local = single.post("/landmarks", content=b"x" * 100, headers={"content-type": "text/plain"})
    assert (remote.status_code, remote.json()) == (local.status_code, local.json())


def test_a_dead_replica_and_a_dead_node_lose_nothing(cluster: LocalCluster) -> None:
    """Bounded load (4 connections, under a minute): SIGKILL the worker node's model replica, wait until Ray has
    replaced it, then SIGKILL the whole worker node. Every request gets 200 or a 503 with Retry-After, none
    hangs, and 200s resume within RECOVERY_S of each kill."""
    drill = fault_drill(cluster, PHOTO.read_bytes(), "[[178, 87, 272, 177]]", REQUEST_TIMEOUT_S + 10)
    summary = json.dumps(drill.counts())
    assert {a.status for a in drill.answers} <= {200, 503}, summary
    assert all(a.retry_after for a in drill.answers if a.status == 503), summary
    assert drill.slowest_s() < REQUEST_TIMEOUT_S + 1, summary
    assert drill.replaced_after_s is not None, "Ray did not replace the killed model replica within 120 s"
    for killed in (drill.replica_killed, drill.node_killed):
        recovery = drill.recovery_s(killed)
        assert recovery is not None, summary
        assert recovery < RECOVERY_S, (recovery, summary)
    assert drill.counts().get("200", 0) >= 20, summary
    assert not any(p.node_ip == WORKER_IP for p in cluster.processes(MODEL)), "the worker node is gone"

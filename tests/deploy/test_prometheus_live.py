"""A real Prometheus scrapes a real server with the project's scrape config; the dashboard query answers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.app.conftest import png_bytes
from tests.support.server import ROOT, free_port, http_status, running_server

P95 = "histogram_quantile(0.95, sum by (le) (rate(landmarks_request_duration_seconds_bucket[1m])))"


def post_image(base: str, data: bytes) -> int:
    boundary = "fuzzboundary42"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="boxes"\r\n\r\n[[10, 10, 50, 50]]\r\n'
            f"--{boundary}--\r\n"
        ).encode()
    )
    request = urllib.request.Request(
        f"{base}/landmarks",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)")
def test_prometheus_scrapes_the_app_and_answers_the_latency_query(tiny_checkpoint, tmp_path: Path):
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    metrics_port = free_port()  # as in Compose: /metrics on its own, internal port
    internal = {"metrics_port": str(metrics_port), "metrics_host": "127.0.0.1"}
    with running_server(tiny_checkpoint, tmp_path / "server.log", **internal) as (base, _):
        job = config["scrape_configs"][0]
        assert all(t.endswith(":9100") for c in job["static_configs"] for t in c["targets"])
        job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
        config["global"]["scrape_interval"] = "1s"
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=(tmp_path / "prom.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            image = png_bytes(np.full((64, 64, 3), 120, np.uint8))
            query = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": P95})
            value = None
            deadline = time.monotonic() + 60
            while value is None and time.monotonic() < deadline:
                assert post_image(base, image) == 200
                time.sleep(0.5)
                if http_status(f"http://127.0.0.1:{port}/-/ready") != 200:
                    continue
                with urllib.request.urlopen(query, timeout=5) as response:
                    result = json.loads(response.read())["data"]["result"]
                if result and math.isfinite(float(result[0]["value"][1])):
                    value = float(result[0]["value"][1])
            assert value is not None, (tmp_path / "prom.log").read_text()[-2000:]
            assert 0 < value < 30
        finally:
            prom.terminate()
            prom.wait(timeout=20)

"""Deployment files: Compose and Prometheus configs validate, and every metric they use is exported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from app.settings import Settings
from tests.app.conftest import open_client
from tests.support.server import ROOT

DOCKER = ROOT / "docker"
METRIC = re.compile(r"\blandmarks_[a-z_]+\b")


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]])
def test_compose_file_validates(profile):
    command = compose_command()
    if command is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    result = subprocess.run([*command, *profile, "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_compose_structure():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "api-gpu", "prometheus", "grafana"} <= set(services)
    assert "profiles" not in services["api"]
    assert services["api-gpu"]["profiles"] == ["gpu"]
    device = services["api-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    # Every setting is passed through to the service.
    env = services["api"]["environment"]
    assert {f"LANDMARKS_{name.upper()}" for name in Settings.model_fields} <= set(env)
    # Compose waits longer than the drain before it kills the container.
    grace = int(services["api"]["stop_grace_period"].rstrip("s"))
    assert grace > Settings.model_fields["drain_timeout_s"].default
    assert services["api"]["healthcheck"]["start_period"]


def test_prometheus_config_validates():
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    result = subprocess.run(
        ["promtool", "check", "config", str(DOCKER / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def exported_series(metrics_text: str) -> set[str]:
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"histogram": ["_bucket", "_sum", "_count"], "counter": ["_total"], "gauge": [""]}[kind]
            names |= {name + s for s in suffixes} | {name}
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "dsc-landmarks.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_every_metric_in_the_dashboard_is_exported(tiny_checkpoint):
    with open_client(tiny_checkpoint) as client:
        exported = exported_series(client.get("/metrics").text)
    used = {m for q in dashboard_queries() for m in METRIC.findall(q)}
    used |= set(METRIC.findall((DOCKER / "prometheus.yml").read_text()))
    assert used, "the dashboard uses no landmarks_* metric"
    assert used <= exported, used - exported


def test_dashboard_has_the_panels_operators_need():
    text = " ".join(dashboard_queries())
    for needle in (
        "histogram_quantile(0.5",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
        "landmarks_batch_size_bucket",
        "landmarks_queue_depth",
        "landmarks_rejected_requests_total",
        "landmarks_inference_seconds_bucket",
    ):
        assert needle in text
    datasource = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_dependency_and_match_this_environment():
    """constraints.txt is the lock that CI, the README install and the image share: it pins every package the
    project asks for, and this environment (installed through it) has exactly those versions."""
    from importlib.metadata import PackageNotFoundError, version

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[_norm(name)] = pinned
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    names = {_norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in wanted} - {"torch", "dsc-landmarks"}
    assert sorted(names - set(pins)) == []
    mismatched = []
    for name, pinned in sorted(pins.items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            mismatched.append(f"{name}: pinned {pinned}, not installed")
            continue
        if installed != pinned:
            mismatched.append(f"{name}: pinned {pinned}, installed {installed}")
    assert mismatched == []

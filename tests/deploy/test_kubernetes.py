"""The Kubernetes manifests (kubernetes/, kustomize layout): valid against the Kubernetes schemas (offline, with
kubernetes-validate), and consistent with the service they run — probes on its health routes, a grace period that
covers its drain, ports and settings that exist. kustomize itself is not run here (no binary on these machines):
the GPU overlay's patch is merged the way kustomize merges containers (by name) and the result is validated."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from tests.support.server import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e .[dev]")
BASE = ROOT / "kubernetes" / "base"
GPU = ROOT / "kubernetes" / "overlays" / "gpu"
VERSION = "1.33.0"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def resources() -> dict[str, dict[str, Any]]:
    kustomization = load(BASE / "kustomization.yaml")
    return {load(BASE / name)["kind"]: load(BASE / name) for name in kustomization["resources"]}


def merge(base: Any, patch: Any) -> Any:
    """Kustomize's strategic merge for what the overlay patches: maps recursively, containers and env by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base):
        out_list = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(out_list) if b["name"] == item["name"]), None)
            if match is None:
                out_list.append(item)
            else:
                out_list[match] = merge(out_list[match], item)
        return out_list
    return patch


@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"])
def test_base_resources_are_valid_kubernetes(kind):
    resource = resources()[kind]
    kubernetes_validate.validate(resource, VERSION, strict=True)


def test_gpu_overlay_is_valid_and_asks_for_a_gpu():
    deployment = merge(resources()["Deployment"], load(GPU / "deployment-gpu.yaml"))
    kubernetes_validate.validate(deployment, VERSION, strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["LANDMARKS_DEVICE"] == "cuda"
    assert env["LANDMARKS_METRICS_PORT"] == "9100"  # kept from the base


def test_the_deployment_matches_the_service_it_runs():
    deployment = resources()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert {name.removeprefix("LANDMARKS_").lower() for name in env} <= set(Settings.model_fields)
    drain = float(env["LANDMARKS_DRAIN_TIMEOUT_S"])
    graceful = 30  # docker/Dockerfile: --timeout-graceful-shutdown 30
    assert "--timeout-graceful-shutdown" in (ROOT / "docker" / "Dockerfile").read_text()
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + graceful
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "metrics": int(env["LANDMARKS_METRICS_PORT"])}
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (docker/Dockerfile)
    service = resources()["Service"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert resources()["PodDisruptionBudget"]["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_validator_rejects_what_kubernetes_would():
    broken = copy.deepcopy(resources()["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = 8000  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)

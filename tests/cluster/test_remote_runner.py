"""The cluster's pieces that need no cluster: the config file Ray takes, and the ingress runner's answers when
model replicas die, stall or fail (a stand-in handle in place of Ray's)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from app.batcher import BatchInfo
from app.errors import ServiceError
from model.engine import Crop, Landmarks

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the cluster extra (ray[serve])")

CONFIG = Path(__file__).resolve().parents[2] / "cluster" / "serve.yaml"


def test_the_config_is_what_serve_deploy_takes() -> None:
    from ray.serve.schema import ServeDeploySchema

    from app.cluster import APP_NAME, application

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text(encoding="utf-8")))
    (app,) = schema.applications
    assert app.name == APP_NAME
    assert app.import_path == "app.cluster:application"
    assert application is not None
    model = next(d for d in app.deployments if d.name == "LandmarkModel")
    assert model.max_replicas_per_node == 1  # a dead node takes one model copy, not all
    assert model.ray_actor_options.num_gpus == 0


class _Response:
    def __init__(self, outcome: Any, delay: float = 0.0) -> None:
        self.outcome, self.delay, self.cancelled = outcome, delay, False

    def __await__(self) -> Any:
        return self._wait().__await__()

    async def _wait(self) -> Any:
        await asyncio.sleep(self.delay)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    """``handle.infer.remote(crops)`` and ``handle.describe.remote()`` answering from a script of outcomes."""

    def __init__(self, outcomes: list[Any], delay: float = 0.0) -> None:
        self.outcomes, self.delay = outcomes, delay
        self.calls: list[tuple[Any, ...]] = []
        self.infer = self.describe = self

    def remote(self, *args: Any) -> _Response:
        self.calls.append(args)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if callable(outcome) and not isinstance(outcome, BaseException):
            outcome = outcome(*args)
        return _Response(outcome, self.delay)


def _answer(crops: list[Crop]) -> list[tuple[Landmarks, BatchInfo]]:
    return [(Landmarks(np.zeros((68, 2)), np.ones(68)), BatchInfo(len(crops), 0.0, 0.001)) for _ in crops]


def _crops(n: int) -> list[Crop]:
    return [Crop(np.full((8, 8, 3), i, np.uint8), np.eye(2, 3)) for i in range(n)]


def _submit(handle: _Handle, crops: list[Crop], timeout: float = 5.0, chunk: int = 4) -> Any:
    from app.cluster import RemoteRunner

    async def go() -> Any:
        runner = RemoteRunner(handle, chunk)  # type: ignore[arg-type]
        return await runner.submit(crops, asyncio.get_running_loop().time() + timeout)

    return asyncio.run(go())


def test_crops_go_in_chunks_of_the_batch_size_and_come_back_in_order() -> None:
    handle = _Handle([_answer])
    crops = _crops(10)
    answers = _submit(handle, crops, chunk=4)
    assert [len(args[0]) for args in handle.calls] == [4, 4, 2]
    assert [c for args in handle.calls for c in args[0]] == crops
    assert len(answers) == 10


def test_a_dead_replica_is_retried_on_another() -> None:
    from ray.exceptions import ActorDiedError

    handle = _Handle([ActorDiedError(), ActorDiedError(), _answer])
    assert len(_submit(handle, _crops(2))) == 2
    assert len(handle.calls) == 3


def test_no_live_replica_is_a_503_with_retry_after() -> None:
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import DeploymentUnavailableError

    handle = _Handle([DeploymentUnavailableError(DeploymentID(name="LandmarkModel", app_name="landmarks"))])
    with pytest.raises(ServiceError) as error:
        _submit(handle, _crops(1))
    assert (error.value.status, error.value.code) == (503, "model_unavailable")
    assert "Retry-After" in error.value.headers
    assert len(handle.calls) == 5  # the first try and four retries


def test_a_stalled_replica_is_a_504_at_the_deadline() -> None:
    handle = _Handle([_answer], delay=5.0)
    with pytest.raises(ServiceError) as error:
        _submit(handle, _crops(1), timeout=0.2)
    assert error.value.status == 504


def test_a_failing_network_is_the_batchers_500() -> None:
    from ray.exceptions import RayTaskError

    handle = _Handle([RayTaskError("infer", "Traceback ...", ValueError("bad"))])
    with pytest.raises(ServiceError) as error:
        _submit(handle, _crops(1))
    assert (error.value.status, error.value.code) == (500, "inference_failed")


def test_a_bad_config_file_stops_the_launcher_with_one_message(tmp_path: Path) -> None:
    from app.cluster import read_config

    assert read_config(CONFIG).applications[0].name == "landmarks"
    bad = tmp_path / "serve.yaml"
    for text in ("applications: [{name: x}]", "proxy_location: [unclosed", ""):
        bad.write_text(text)
        with pytest.raises(SystemExit, match=rf"^--config {bad}: "):
            read_config(bad)
    with pytest.raises(SystemExit, match="No such file"):
        read_config(tmp_path / "missing.yaml")


def test_joining_a_cluster_without_token_authentication_needs_saying_so() -> None:
    from app.cluster import auth_problem

    problem = auth_problem({}, "10.0.0.1:6379", insecure=False)
    assert problem is not None
    assert "RAY_AUTH_MODE=token" in problem
    assert "--insecure-no-auth" in problem
    assert auth_problem({"RAY_AUTH_MODE": "token"}, "10.0.0.1:6379", insecure=False) is None
    assert auth_problem({}, "10.0.0.1:6379", insecure=True) is None
    assert auth_problem({}, None, insecure=False) is None  # a local cluster: app.cluster turns it on itself

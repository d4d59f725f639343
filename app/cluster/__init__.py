"""The service on a Ray Serve cluster: the same FastAPI app, spread over hosts.

Two deployments (``cluster/serve.yaml`` sets their replicas, CPUs, GPUs and autoscaling):

- :class:`LandmarkIngress` serves the *same* app as ``dsc-landmarks-serve`` (routes, limits, API keys, errors,
  bodies): it decodes, detects and crops through the same :class:`model.pipeline.Pipeline`, and its runner,
  :class:`RemoteRunner`, sends each request's crops to the model deployment instead of a local batcher.
- :class:`LandmarkModel` owns the network and batches the faces of every ingress replica into one forward
  (Ray Serve's ``serve.batch``, up to ``LANDMARKS_MAX_BATCH_SIZE`` faces), on one inference thread.

A model replica that dies (its process or its node) costs no request: the ingress sends the crops again to a
live replica until the request's deadline, then answers ``503 model_unavailable`` with ``Retry-After``.

Modules: :mod:`.deployments` (the two deployments and ``application``, the import path
``cluster/serve.yaml`` names), :mod:`.runner` (the ingress's :class:`RemoteRunner`), :mod:`.metrics` (the
service's metrics through Ray), :mod:`.launch` (``python -m app.cluster``).

Start: ``python -m app.cluster --address HEAD:6379`` deploys ``cluster/serve.yaml`` on a running cluster and
waits until it is ready; without ``--address`` it starts a local one and serves until Ctrl-C. On a cluster
with Ray's dashboard, ``serve deploy cluster/serve.yaml`` takes the same file.
"""

from app.cluster.deployments import APP_NAME, CONFIG, LandmarkIngress, LandmarkModel, application, cluster_settings
from app.cluster.launch import auth_problem, deploy, main, read_config
from app.cluster.metrics import RayMetrics
from app.cluster.runner import RemoteRunner

__all__ = [
    "APP_NAME", "CONFIG", "LandmarkIngress", "LandmarkModel", "RayMetrics", "RemoteRunner", "application",
    "auth_problem", "cluster_settings", "deploy", "main", "read_config",
]  # fmt: skip

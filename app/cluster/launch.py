"""``python -m app.cluster``: check the config and the cluster's authentication, deploy, wait until it runs."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import ray
import yaml
from pydantic import ValidationError
from ray import serve
from ray.serve.schema import ServeDeploySchema

from app.cluster.deployments import APP_NAME, CONFIG


def read_config(path: Path) -> ServeDeploySchema:
    """The Ray Serve config file, checked before anything connects to the cluster (a bad one: one message)."""
    try:
        return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        sys.exit(f"--config {path}: {exc}")


def deploy(schema: ServeDeploySchema, timeout_s: float) -> None:
    """What ``serve deploy`` does with the config file (without needing Ray's dashboard), then wait until the
    application is running (or say why not)."""
    from ray.serve._private import api as serve_api
    from ray.serve.config import ProxyLocation, gRPCOptions

    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=ProxyLocation(schema.proxy_location),
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
    )
    client.deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(APP_NAME)
        state = status.status if status is not None else "NOT_STARTED"
        if state == "RUNNING":
            return
        if state in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
            message = status.message if status is not None else ""
            sys.exit(f"{APP_NAME}: {state} after {timeout_s:.0f} s{': ' + message if message else ''}")
        time.sleep(0.5)


def auth_problem(env: Mapping[str, str], address: str | None, insecure: bool) -> str | None:
    """Why this process must not join the cluster: token authentication off for a running cluster, without
    ``--insecure-no-auth`` (a Ray cluster without it runs any code anyone who reaches its ports sends)."""
    if address is None or insecure or env.get("RAY_AUTH_MODE") == "token":
        return None
    return (
        "Ray token authentication is off: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (or RAY_AUTH_TOKEN) on "
        "every node and here (README: Scaling out), or pass --insecure-no-auth"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="deploy the landmark service on a Ray Serve cluster")
    parser.add_argument("--address", help="a running cluster's GCS address (HEAD:6379); default: start a local one")
    parser.add_argument("--node-ip", help="this machine's address in the cluster (default: Ray's guess)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="Ray Serve config file (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait until the app is running")
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="connect to a cluster without Ray's token authentication (anyone who reaches its ports runs code)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    schema = read_config(args.config)
    problem = auth_problem(os.environ, args.address, args.insecure_no_auth)
    if problem:
        sys.exit(problem)
    if args.address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # a local cluster makes its own token (~/.ray/auth_token)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local cluster would otherwise report usage outside
    ray.init(address=args.address, _node_ip_address=args.node_ip, namespace="serve", logging_level=logging.WARNING)
    deploy(schema, args.timeout)
    print(f"{APP_NAME} running on http://{schema.http_options.host}:{schema.http_options.port}", flush=True)
    if args.address is None:  # the local cluster lives as long as this process
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while True:
                time.sleep(3600)
        except (KeyboardInterrupt, SystemExit):
            serve.shutdown()

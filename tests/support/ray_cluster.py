"""A real two-node Ray cluster on this machine, on loopback addresses only, for the cluster tests and benchmark.

Ray rewrites ``127.0.0.1``/``localhost`` to the host's network address, so the nodes take other loopback
addresses, which it keeps: the head on ``127.0.0.2``, the worker node on ``127.0.0.3``. Usage reporting is off
(``RAY_USAGE_STATS_ENABLED=0``) and token authentication on (:func:`ray_env`). :meth:`LocalCluster.stop` runs
``ray stop --force`` (every Ray process of this machine's user): call it at the end of every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.server import ROOT, cpu_seconds, free_port

CONFIG = ROOT / "cluster" / "serve.yaml"
HEAD_IP = "127.0.0.2"
WORKER_IP = "127.0.0.3"


TOKEN_FILE = "ray_auth_token"  # in the cluster's work folder, mode 0600


def ray_env(home: Path) -> dict[str, str]:
    """The environment of every Ray process the cluster starts: usage reporting off, this project importable,
    ``home`` as HOME (nothing of the user's ``~/.ray`` reaches the test cluster), and **token authentication on**
    (``RAY_AUTH_MODE=token``, the token in ``home/ray_auth_token``): a client without it is refused."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT), "HOME": str(home),
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(home / TOKEN_FILE)}  # fmt: skip


def write_token(home: Path) -> Path:
    """A fresh random token for one cluster, readable by this user only."""
    path = home / TOKEN_FILE
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))
    return path


def loopback_config(
    port: int, model_replicas: int = 2, torch_threads: int = 1, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``cluster/serve.yaml`` as shipped, changed only where a one-machine test needs it: the proxy on the head's
    loopback address, fixed replica counts (model replicas one per node), fractional CPUs (the nodes share
    this machine's cores), the ingress on the head (with the proxy: the node that dies is the worker)."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    config["proxy_location"] = "HeadOnly"
    config["http_options"].update(host=HEAD_IP, port=port)
    app = config["applications"][0]
    env = app["runtime_env"]["env_vars"]
    env.update(LANDMARKS_TORCH_THREADS=str(torch_threads), LANDMARKS_OPENCV_THREADS="1", **(extra_env or {}))
    deployments = {d["name"]: d for d in app["deployments"]}
    ingress, model = deployments["LandmarkIngress"], deployments["LandmarkModel"]
    ingress.pop("autoscaling_config")
    ingress["num_replicas"] = 1
    ingress["ray_actor_options"] = {"num_cpus": 0.1, "resources": {"node:__internal_head__": 0.001}}
    model.pop("autoscaling_config")
    model["num_replicas"] = model_replicas
    model["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 0}
    return config


@dataclass(frozen=True)
class RayProcess:
    pid: int
    title: str
    node_ip: str


class LocalCluster:
    """``ray start`` a head (127.0.0.2) and a worker node (127.0.0.3), deploy the app on them, kill parts of it."""

    def __init__(self, workdir: Path, cpus_per_node: int = 4) -> None:
        self.workdir = workdir
        self.cpus = cpus_per_node
        self.gcs_port = free_port(HEAD_IP)
        self.address = f"{HEAD_IP}:{self.gcs_port}"
        self.url = ""
        self.metrics_ports = {HEAD_IP: free_port(HEAD_IP), WORKER_IP: free_port(WORKER_IP)}
        write_token(workdir)

    def _ray(self, *args: str, timeout: float = 120) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        done = subprocess.run([ray, *args], env=ray_env(self.workdir), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def start(self) -> None:
        common = ["--num-cpus", str(self.cpus), "--disable-usage-stats"]
        self._ray(
            "start", "--head", "--node-ip-address", HEAD_IP, "--port", str(self.gcs_port), "--include-dashboard",
            "false", "--ray-client-server-port", str(free_port(HEAD_IP)),
            "--metrics-export-port", str(self.metrics_ports[HEAD_IP]), *common,
        )  # fmt: skip
        self._ray(
            "start", "--address", self.address, "--node-ip-address", WORKER_IP,
            "--metrics-export-port", str(self.metrics_ports[WORKER_IP]), *common,
        )  # fmt: skip

    def deploy(self, config: dict[str, Any], timeout_s: float = 300) -> str:
        """Deploy with ``python -m app.cluster`` (the documented command); the app's base URL once it runs."""
        path = self.workdir / "serve.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        command = [sys.executable, "-m", "app.cluster", "--address", self.address, "--node-ip", HEAD_IP]
        command += ["--config", str(path), "--timeout", str(timeout_s)]
        env = ray_env(self.workdir)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s + 60)
        if done.returncode != 0:
            raise RuntimeError(f"deploy failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        http = config["http_options"]
        self.url = f"http://{http['host']}:{http['port']}"
        return self.url

    def processes(self, title: str) -> list[RayProcess]:
        """Ray workers whose process title starts with ``title`` (``ray::ServeReplica:landmarks:LandmarkModel``),
        with the node each runs on (its parent raylet's address)."""
        raylets = dict(_raylets())
        found = []
        for pid, ppid, name in _processes():
            if name.startswith(title) and ppid in raylets:
                found.append(RayProcess(pid, name, raylets[ppid]))
        return found

    def kill_replica(self, deployment: str, node_ip: str) -> RayProcess:
        """SIGKILL one replica process of ``deployment`` on the node at ``node_ip`` (a crash, not a drain)."""
        title = f"ray::ServeReplica:landmarks:{deployment}"
        victims = [p for p in self.processes(title) if p.node_ip == node_ip]
        if not victims:
            raise RuntimeError(f"no {deployment} replica on {node_ip}: {self.processes(title)}")
        os.kill(victims[0].pid, signal.SIGKILL)
        return victims[0]

    def kill_node(self, node_ip: str = WORKER_IP) -> int:
        """SIGKILL the worker node: its raylet, every process it started, and its log monitor (a machine that
        loses power). Returns how many processes died."""
        raylets = [pid for pid, ip in _raylets() if ip == node_ip]
        victims = set(raylets)
        for pid, ppid, _ in _processes():
            if ppid in raylets or _cmdline_has(pid, f"--node-ip-address={node_ip}"):
                victims.add(pid)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(victims)

    def wait_for(self, title: str, node_ip: str, timeout_s: float) -> bool:
        """Wait until a process titled ``title`` runs on ``node_ip`` (a replaced replica)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.node_ip == node_ip for p in self.processes(title)):
                return True
            time.sleep(0.5)
        return False

    def metrics(self, node_ip: str = HEAD_IP) -> str:
        """The Prometheus exposition of a node's metrics agent (Ray's metrics and the service's, ``ray_`` first)."""
        url = f"http://{node_ip}:{self.metrics_ports[node_ip]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every Ray process on this machine (GCS, raylets, agents, proxy,
        controller, replicas) so far, from /proc: differences give the cluster's CPU per request."""
        return cpu_seconds([
            pid for pid, _, title in _processes()
            if title.startswith("ray::") or "site-packages/ray/" in title or _cmdline_has(pid, "site-packages/ray/")
        ])  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._ray("stop", "--force", timeout=60)


@dataclass(frozen=True)
class Answer:
    began: float
    done: float
    status: int | str  # the HTTP status, or the client's exception name (a hang past the timeout, a reset)
    retry_after: str | None


@dataclass(frozen=True)
class Drill:
    """What the clients saw while a model replica and then the worker node were killed (monotonic seconds)."""

    answers: list[Answer]
    replica_killed: float
    replaced_after_s: float | None  # until Ray ran a new model replica on the worker node
    node_killed: float

    def counts(self) -> dict[str, int]:
        statuses = [str(a.status) for a in self.answers]
        return {s: statuses.count(s) for s in sorted(set(statuses))}

    def recovery_s(self, killed: float) -> float | None:
        """Seconds from a kill until a request sent after it got a 200 (None: none did)."""
        served = [a.done for a in self.answers if a.status == 200 and a.began >= killed]
        return min(served) - killed if served else None

    def slowest_s(self) -> float:
        return max(a.done - a.began for a in self.answers)


async def _load(url: str, photo: bytes, boxes: str, timeout_s: float, stop: asyncio.Event, out: list[Answer]) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s) as client:
        while not stop.is_set():
            began = time.monotonic()
            try:
                r = await client.post(
                    url + "/landmarks", files={"image": ("a.jpg", photo, "image/jpeg")}, data={"boxes": boxes}
                )
                out.append(Answer(began, time.monotonic(), r.status_code, r.headers.get("retry-after")))
            except httpx.HTTPError as exc:
                out.append(Answer(began, time.monotonic(), type(exc).__name__, None))


def fault_drill(
    cluster: LocalCluster, photo: bytes, boxes: str, timeout_s: float, connections: int = 4, after_s: float = 12
) -> Drill:
    """Bounded load on ``connections`` connections (each request with a ``timeout_s`` client timeout): after 3 s
    SIGKILL the worker node's model replica, wait until Ray has replaced it, 3 s later SIGKILL the whole worker
    node, keep the load on ``after_s`` more seconds, stop."""

    async def run() -> Drill:
        answers: list[Answer] = []
        stop = asyncio.Event()
        clients = [asyncio.create_task(_load(cluster.url, photo, boxes, timeout_s, stop, answers)) for _ in
                   range(connections)]  # fmt: skip
        try:
            await asyncio.sleep(3)
            replica_killed = time.monotonic()
            cluster.kill_replica("LandmarkModel", WORKER_IP)
            title = "ray::ServeReplica:landmarks:LandmarkModel"
            replaced = await asyncio.to_thread(cluster.wait_for, title, WORKER_IP, 120)
            replaced_after = time.monotonic() - replica_killed if replaced else None
            await asyncio.sleep(3)
            node_killed = time.monotonic()
            if cluster.kill_node(WORKER_IP) < 2:
                raise RuntimeError("the worker node had no processes to kill")
            await asyncio.sleep(after_s)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        return Drill(answers, replica_killed, replaced_after, node_killed)

    return asyncio.run(run())


def _processes() -> list[tuple[int, int, str]]:
    """(pid, ppid, process title) of every process (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        found.append((int(entry.name), ppid, title))
    return found


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _raylets() -> list[tuple[int, str]]:
    """(pid, node address) of every raylet on this machine."""
    found = []
    for pid, _, title in _processes():
        if title.endswith("/raylet"):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            for arg in args:
                if arg.startswith(b"--node_ip_address="):
                    found.append((pid, arg.split(b"=", 1)[1].decode()))
    return found

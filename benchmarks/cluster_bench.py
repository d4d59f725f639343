"""The Ray Serve app against the single-process service, in one run on this machine (loopback only).

    python -m benchmarks.cluster_bench [--seconds 10] [--out benchmarks/results/cluster.md]

Both serve the shipped checkpoint with caller boxes on the same 32 AFLW2000-3D val photos, driven by wrk at 1 and
8 connections: req/s, p50, the server's CPU seconds per request (the single process; every Ray process of the
cluster: GCS, raylets, agents, proxy, controller, replicas) and the mean batch the network ran. The cluster is a
real two-node one (``tests.support.ray_cluster``: head 127.0.0.2, worker 127.0.0.3) deployed from
``cluster/serve.yaml`` with one ingress replica, and either one model replica with every core's threads (the
single process's set-up) or two with one thread each, one per node. Last, the fault drill of the cluster test
(``tests.support.ray_cluster.fault_drill``) on the two-replica set-up, with what the clients saw.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import machine, publish, table
from benchmarks.service_bench import DATA, batch_stats, drive, warm_up, write_bodies
from model.artifacts import SHIPPED_CHECKPOINT
from tests.support.ray_cluster import HEAD_IP, WORKER_IP, Drill, LocalCluster, fault_drill, free_port, loopback_config
from tests.support.server import running_server, tree_cpu_seconds
from training.datasets import read_aflw2000

DRILL_TIMEOUT_S = 40  # client timeout in the fault drill: past the service's 30 s deadline, so a hang shows
RAY_REPORT_S = 12  # Ray's metrics agent publishes what replicas recorded every few seconds
HEADERS = ["server", "connections", "req/s", "p50 ms", "server CPU ms / request", "mean batch", "errors"]


def ray_batch_stats(cluster: LocalCluster) -> tuple[float, float]:
    """(faces, forwards) so far, summed over every model replica on both nodes."""
    text = cluster.metrics(HEAD_IP) + cluster.metrics(WORKER_IP)

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^ray_{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.MULTILINE))

    return total("landmarks_forward_faces_total"), total("landmarks_forwards_total")


def measure(
    name: str,
    base: str,
    bodies: Path,
    count: int,
    seconds: int,
    cpu: Callable[[], float],
    stats: Callable[[], tuple[float, float]],
    settle_s: float = 0.0,
) -> list[list[object]]:
    rows: list[list[object]] = []
    for clients in (1, 8):
        warm_up(base, bodies, count)
        time.sleep(settle_s)
        faces0, batches0 = stats()
        cpu0 = cpu()
        result = drive(base, bodies, count, clients, seconds, warm=False, stats=lambda: (0.0, 0.0))
        cpu1 = cpu()
        time.sleep(settle_s)
        faces1, batches1 = stats()
        per_request_ms = 1000 * (cpu1 - cpu0) / max(result["requests"], 1)
        mean_batch = (faces1 - faces0) / max(batches1 - batches0, 1)
        rows.append([
            name, clients, f"{result['throughput']:.1f}", f"{result['p50']:.0f}", f"{per_request_ms:.0f}",
            f"{mean_batch:.2f}", int(result["errors"]),
        ])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="per load level")
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    return parser


def main(args: argparse.Namespace) -> str:
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    folder = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    count = write_bodies(folder, 32)
    rows: list[list[object]] = []
    drill: Drill | None = None
    with running_server(SHIPPED_CHECKPOINT, folder / "single.log", torch_threads="2") as (base, proc):
        rows += measure(
            "single process (2 torch threads)", base, folder, count, args.seconds,
            lambda: tree_cpu_seconds(proc.pid), lambda: batch_stats(base),
        )  # fmt: skip
    cluster = LocalCluster(folder)
    try:
        cluster.start()
        port = free_port(HEAD_IP)  # the proxy keeps the port of the first deploy
        for replicas, threads in ((1, 2), (2, 1)):
            base = cluster.deploy(loopback_config(port, model_replicas=replicas, torch_threads=threads))
            rows += measure(
                f"Ray Serve, 2 nodes, {replicas} model replica(s) x {threads} thread(s)", base, folder, count,
                args.seconds, cluster.cpu_seconds, lambda: ray_batch_stats(cluster), settle_s=RAY_REPORT_S,
            )  # fmt: skip
        face = read_aflw2000(DATA, "val")[0]
        box = json.dumps([[*face.points.min(0).tolist(), *face.points.max(0).tolist()]])
        drill = fault_drill(cluster, face.image.read_bytes(), box, timeout_s=DRILL_TIMEOUT_S)
    finally:
        cluster.stop()
    single = {r[1]: float(str(r[2])) for r in rows if str(r[0]).startswith("single")}
    ratios = [
        f"- Ray ({str(r[0]).split(', ', 2)[2]}) / single process at {r[1]} connection(s): "
        f"{float(str(r[2])) / single[int(str(r[1]))]:.2f}x req/s"
        for r in rows
        if str(r[0]).startswith("Ray")
    ]
    lines = [
        "# The Ray Serve app against the single-process service",
        "",
        f"`python -m benchmarks.cluster_bench --seconds {args.seconds}` on {machine()}.",
        "Caller boxes, 32 AFLW2000-3D val photos, wrk on the same machine; one ingress replica; the nodes share the "
        "machine's cores, so the cluster's own processes compete with the network.",
        "",
        table(HEADERS, rows),
        "",
        *ratios,
        *drill_lines(drill),
    ]
    return publish(lines, args.out)


def drill_lines(drill: Drill | None) -> list[str]:
    if drill is None:
        return []

    def seconds(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} s"

    return [
        "",
        "## Fault drill (2 model replicas, one per node; 4 connections, one AFLW2000-3D val photo with its box)",
        "",
        "SIGKILL the worker node's model replica; once Ray has replaced it, SIGKILL the whole worker node "
        "(raylet, agents, replicas); 12 s more load.",
        "",
        f"- answers: {json.dumps(drill.counts())} (client timeout {DRILL_TIMEOUT_S} s)",
        f"- slowest answer: {drill.slowest_s():.1f} s",
        f"- model replica killed: first 200 sent after it came {seconds(drill.recovery_s(drill.replica_killed))} "
        f"later; Ray ran a new replica on the worker node {seconds(drill.replaced_after_s)} after the kill",
        f"- worker node killed: first 200 sent after it came {seconds(drill.recovery_s(drill.node_killed))} later",
    ]


if __name__ == "__main__":
    main(get_args_parser().parse_args())

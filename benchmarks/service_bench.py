"""End-to-end HTTP benchmark on loopback: throughput and latency at 1, 8 and 32 concurrent clients, batching
on (the defaults) and off (``LANDMARKS_MAX_BATCH_SIZE=1``), same images, caller boxes (detection excluded).

    python -m benchmarks.service_bench [--checkpoint CKPT] [--requests-per-client 20] [--out FILE]

Also measures, in the same run, the raw model throughput at the batch size the server actually formed, so the
HTTP overhead shows as a ratio, and the server's peak RSS. The load generator shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from app.settings import DEFAULT_CHECKPOINT
from benchmarks.common import machine, table, timeit
from model.checkpoint import load_for_inference
from tests.server import running_server
from training.datasets import read_aflw2000

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aflw2000-3d"


def load_requests(count: int) -> list[tuple[bytes, str]]:
    samples = read_aflw2000(DATA, "val")[:count]
    return [(s.image.read_bytes(), json.dumps([[*s.points.min(0), *s.points.max(0)]])) for s in samples]


async def client_loop(
    client: httpx.AsyncClient, base: str, work: list[tuple[bytes, str]], latencies: list[float], statuses: list[int]
) -> None:
    for image, boxes in work:
        start = time.perf_counter()
        response = await client.post(
            f"{base}/landmarks", files={"image": ("f.jpg", image, "image/jpeg")}, data={"boxes": boxes}
        )
        latencies.append(time.perf_counter() - start)
        statuses.append(response.status_code)


async def drive(base: str, requests: list[tuple[bytes, str]], clients: int, per_client: int) -> dict[str, float]:
    latencies: list[float] = []
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        await client_loop(client, base, requests[:2], [], [])  # warm the connection and the server
        work = [[requests[(c * per_client + i) % len(requests)] for i in range(per_client)] for c in range(clients)]
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, base, w, latencies, statuses) for w in work))
        elapsed = time.perf_counter() - start
        metrics = (await client.get(f"{base}/metrics")).text
    lat = np.array(latencies) * 1000
    sums = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(("landmarks_batch_size_sum", "landmarks_batch_size_count"))
    }
    return {
        "ok": statuses.count(200) / len(statuses),
        "throughput": len(latencies) / elapsed,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)),
        "mean_batch": sums["landmarks_batch_size_sum"] / max(sums["landmarks_batch_size_count"], 1),
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_throughput(checkpoint: Path, precision: str, batch: int) -> float:
    engine = load_for_inference(checkpoint, "cpu", precision)  # type: ignore[arg-type]
    size = engine.config.input_size
    crops = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8)
    inverse = torch.eye(2, 3).expand(batch, 2, 3).contiguous()
    return batch / timeit(lambda: engine(crops, inverse), min_time=2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=12)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--log-dir", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    requests = load_requests(64)
    results: dict[tuple[str, int], dict[str, float]] = {}
    for label, env in (("batching on", {}), ("batching off", {"max_batch_size": "1", "max_wait_ms": "0"})):
        settings = {"precision": args.precision, "torch_threads": str(torch.get_num_threads()), **env}
        with running_server(args.checkpoint, args.log_dir / f"server-{label.split()[1]}.log", **settings) as (
            base,
            proc,
        ):
            for clients in (int(c) for c in args.clients.split(",")):
                per_client = max(3, args.requests_per_client * 8 // max(clients, 8))
                results[(label, clients)] = {
                    **asyncio.run(drive(base, requests, clients, per_client)),
                    "rss": peak_rss_mb(proc.pid),
                }
                print(label, clients, results[(label, clients)], flush=True)
    rows = []
    for (label, clients), r in results.items():
        raw = raw_throughput(args.checkpoint, args.precision, max(1, round(r["mean_batch"])))
        r["raw"] = raw
        rows.append(
            [
                label,
                clients,
                f"{r['throughput']:.1f}",
                f"{r['p50']:.0f}",
                f"{r['p95']:.0f}",
                f"{r['p99']:.0f}",
                f"{r['mean_batch']:.1f}",
                f"{raw:.1f}",
                f"{r['throughput'] / raw:.2f}",
                f"{r['rss']:.0f}",
                f"{100 * r['ok']:.0f} %",
            ]
        )
    single = 1000 / raw_throughput(args.checkpoint, args.precision, 1)
    top = max(int(c) for c in args.clients.split(","))
    gain = results[("batching on", top)]["throughput"] / results[("batching off", top)]["throughput"]
    lines = [
        f"Machine: {machine()}",
        f"Checkpoint: {args.checkpoint.name}, precision {args.precision}",
        "",
        table(
            [
                "mode",
                "clients",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "mean batch",
                "raw model faces/s at that batch",
                "e2e / raw",
                "server peak RSS MB",
                "200s",
            ],
            rows,
        ),
        "",
        f"Batching gain at {top} clients: {gain:.2f}x. Single-image forward: {single:.0f} ms; "
        f"p50 at 1 client (batching on): {results[('batching on', 1)]['p50']:.0f} ms "
        f"({results[('batching on', 1)]['p50'] / single:.2f}x).",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

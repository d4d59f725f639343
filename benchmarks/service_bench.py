"""End-to-end HTTP benchmark on loopback: throughput and latency at 1, 8 and 32 concurrent connections, batching
on (the defaults) and off (``LANDMARKS_MAX_BATCH_SIZE=1``), the same 64 val images with caller boxes (detection
excluded). The load comes from wrk (``apt-get install wrk``: a C load generator, so the client takes little of
the machine's CPU).

    python -m benchmarks.service_bench [--checkpoint CKPT] [--precision bf16] [--seconds 10] [--out FILE]

Also measures, in the same run, the raw model throughput at the batch size the server actually formed (so the
HTTP overhead shows as a ratio) and the server's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import machine, table, timeit
from model.artifacts import SHIPPED_CHECKPOINT
from model.engine import EngineOptions, PrecisionName
from model.inference import load_for_inference
from tests.support.server import running_server
from training.datasets import read_aflw2000

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aflw2000-3d"
SCRIPT = Path(__file__).with_name("wrk_post.lua")
BOUNDARY = "dsclandmarksbenchboundary"


def write_bodies(folder: Path, count: int, with_boxes: bool = True, data: Path = DATA) -> int:
    """Multipart bodies (image, and boxes from the ground truth with ``passes`` 1 unless ``with_boxes`` is off)
    for wrk to cycle, from the val split of the AFLW2000-3D style folder ``data``. One pass exactly: the default
    would re-frame the few boxes its landmarks do not fit, and these benchmarks time one forward per face."""
    samples = read_aflw2000(data, "val")[:count]
    for i, s in enumerate(samples, 1):
        boxes = json.dumps([[*s.points.min(0).tolist(), *s.points.max(0).tolist()]])
        box_field = (
            f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="boxes"\r\n\r\n{boxes}'
            f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="passes"\r\n\r\n1'
        )
        body = (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="f.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n"
            ).encode()
            + s.image.read_bytes()
            + ((box_field if with_boxes else "") + f"\r\n--{BOUNDARY}--\r\n").encode()
        )
        (folder / f"body{i}.bin").write_bytes(body)
    return len(samples)


def batch_stats(base: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("landmarks_batch_size_sum", "landmarks_batch_size_count"))
    }
    return values["landmarks_batch_size_sum"], values["landmarks_batch_size_count"]


def warm_up(base: str, bodies: Path, count: int, wrk: str = "wrk") -> None:
    """Two seconds of one connection, so a level starts on a warm server (not counted in its numbers)."""
    subprocess.run(
        [wrk, "-t1", "-c1", "-d2s", "-s", str(SCRIPT), base, "--", str(bodies), str(count), BOUNDARY],
        capture_output=True,
        check=True,
    )


def drive(
    base: str,
    bodies: Path,
    count: int,
    clients: int,
    seconds: int,
    threads: int = 1,
    wrk: str = "wrk",
    warm: bool = True,
    stats: Callable[[], tuple[float, float]] | None = None,
) -> dict[str, float]:
    """One load level from wrk: throughput, latency percentiles, errors and the mean batch the server formed.
    ``warm=False`` when the caller ran :func:`warm_up` itself (to keep it out of its own CPU accounting);
    ``stats`` reads (faces, forwards) so far (default: the service's /metrics)."""
    if warm:
        warm_up(base, bodies, count, wrk)
    stats = stats or (lambda: batch_stats(base))
    faces0, batches0 = stats()
    out = subprocess.run(
        [
            wrk,
            f"-t{min(threads, clients)}",
            f"-c{clients}",
            f"-d{seconds}s",
            "--timeout",
            "60s",
            "-s",
            str(SCRIPT),
            base,
            "--",
            str(bodies),
            str(count),
            BOUNDARY,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    faces1, batches1 = stats()
    fields = next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:]
    requests, micros, p50, p95, p99, errors = (float(v) for v in fields)
    return {
        "throughput": requests / (micros / 1e6),
        "p50": p50 / 1000,
        "p95": p95 / 1000,
        "p99": p99 / 1000,
        "errors": errors,
        "requests": requests,
        "mean_batch": (faces1 - faces0) / max(batches1 - batches0, 1),
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_throughput(
    checkpoint: Path, precision: PrecisionName, batch: int, device: str = "cpu", max_batch: int = 64
) -> float:
    """Faces/s of the engine as the service runs it (CUDA graphs up to ``max_batch`` on CUDA, crops from host memory,
    results back on the host, which synchronises each call)."""
    options = EngineOptions(device=device, precision=precision, max_batch_size=max_batch)
    engine = load_for_inference(checkpoint, options)
    size = engine.config.input_size
    crops = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8)
    inverse = torch.eye(2, 3).expand(batch, 2, 3).contiguous()
    return batch / timeit(lambda: engine(crops, inverse), min_time=2.0)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--precision", default="bf16", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--log-dir", type=Path, default=Path("runs/bench"))
    return parser


def main(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the load: apt-get install wrk")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.clients.split(",")]
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        count = write_bodies(Path(tmp), 64)
        for label, env in (("batching on", {}), ("batching off", {"max_batch_size": "1"})):
            settings = {"precision": args.precision, "torch_threads": str(torch.get_num_threads()), **env}
            log = args.log_dir / f"server-{label.split()[1]}.log"
            with running_server(args.checkpoint, log, **settings) as (base, proc):
                for clients in levels:
                    r = drive(base, Path(tmp), count, clients, args.seconds)
                    r["rss"] = peak_rss_mb(proc.pid)
                    results[(label, clients)] = r
                    print(label, clients, r, flush=True)
    rows = []
    for (label, clients), r in results.items():
        raw = raw_throughput(args.checkpoint, args.precision, max(1, round(r["mean_batch"])))
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
                f"{int(r['errors'])}",
            ]
        )
    single = 1000 / raw_throughput(args.checkpoint, args.precision, 1)
    top = max(levels)
    gain = results[("batching on", top)]["throughput"] / results[("batching off", top)]["throughput"]
    p50_one = results[("batching on", 1)]["p50"]
    lines = [
        f"Machine: {machine()}",
        f"Checkpoint: {args.checkpoint.name}, precision {args.precision}, "
        f"{args.seconds} s per level, load from wrk on the same machine",
        "",
        table(
            [
                "mode",
                "connections",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "mean batch",
                "raw model faces/s at that batch",
                "e2e / raw",
                "server peak RSS MB",
                "non-2xx / errors",
            ],
            rows,
        ),
        "",
        f"Batching gain at {top} connections: {gain:.2f}x. Single-image forward (in-process): {single:.0f} ms; "
        f"p50 at 1 connection (batching on): {p50_one:.0f} ms ({p50_one / single:.2f}x).",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

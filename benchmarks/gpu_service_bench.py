"""The HTTP service on a GPU host: requests/s at 1/32/128 connections for several ``LANDMARKS_WORKERS``, against
the raw model's throughput measured in the same run, with the host's CPU use that explains the gap.

    python -m benchmarks.gpu_service_bench --out benchmarks/results/gpu_service_<card>.md [--workers 1,4,8,14]

Each worker count starts the real service (``python -m app.server``, the shipped checkpoint, CUDA graphs, fp16 by
default, ``--max-batch`` faces per forward) and waits until every worker has finished its start-up. The load is
wrk on the same host (``--wrk`` names the binary), cycling 64 AFLW2000-3D val photos (``--photos``, a folder in that
dataset's format) with caller boxes: decode + crop + one pass, the path a GPU host is sized for. The largest worker
count is also run without boxes (YuNet + two passes). Per level: req/s, p50/p99, the mean batch the workers
formed, the server processes' CPU seconds per request and the host's busy share, so a level that stops scaling
shows whether the host's cores or the GPU ran out. ``--device cpu`` runs the same thing on a machine without a GPU
(a dry run of the script; its numbers say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from benchmarks.common import publish, table
from benchmarks.service_bench import DATA, drive, raw_throughput, warm_up, write_bodies
from model.artifacts import SHIPPED_CHECKPOINT
from tests.support.server import host_jiffies, running_server, tree_cpu_seconds, wait_for_workers


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--workers", default="1,4,8,14", help="LANDMARKS_WORKERS values to run")
    p.add_argument("--clients", default="1,32,128", help="wrk connections per level")
    p.add_argument(
        "--no-box-clients", default="32,128", help="levels of the no-boxes run at the largest worker count ('': none)"
    )
    p.add_argument("--seconds", type=int, default=8, help="per level, after a 2 s warm-up")
    p.add_argument("--max-batch", type=int, default=128, help="LANDMARKS_MAX_BATCH_SIZE")
    p.add_argument("--preprocess-threads", type=int, default=2, help="LANDMARKS_PREPROCESS_THREADS per worker")
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--photos", type=Path, default=DATA, help="AFLW2000-3D style folder with a val split")
    p.add_argument("--wrk", default="wrk", help="the wrk binary")
    p.add_argument("--start-timeout", type=float, default=180.0, help="seconds for all workers to start")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--log-dir", type=Path, default=Path("runs/bench"))
    return p


def main(args: argparse.Namespace) -> str:
    wrk = shutil.which(args.wrk)
    if wrk is None:
        raise SystemExit(f"wrk is needed for the load ({args.wrk} not found): apt-get install wrk, or --wrk PATH")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for a dry run")
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (dry run)"
    worker_counts = [int(w) for w in args.workers.split(",")]
    levels = [int(c) for c in args.clients.split(",")]
    args.log_dir.mkdir(parents=True, exist_ok=True)
    runs = [("caller boxes", w, levels) for w in worker_counts]
    no_box_levels = [int(c) for c in args.no_box_clients.split(",") if c]
    if no_box_levels:
        runs.append(("no boxes (YuNet + 2 passes)", max(worker_counts), no_box_levels))
    rows: list[list[object]] = []
    best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for mode, workers, clients_levels in runs:
            with_boxes = mode == "caller boxes"
            bodies = Path(tmp) / ("boxes" if with_boxes else "plain")
            if not bodies.is_dir():
                bodies.mkdir()
                write_bodies(bodies, 64, with_boxes=with_boxes, data=args.photos)
            settings = {
                "device": args.device,
                "precision": args.precision,
                "cuda_graphs": "true",
                "max_batch_size": str(args.max_batch),
                "preprocess_threads": str(args.preprocess_threads),
                "workers": str(workers),
                "queue_size": "4096",
            }
            log = args.log_dir / f"gpu-service-{bodies.name}-{workers}.log"
            with running_server(args.checkpoint, log, **settings) as (base, proc):
                wait_for_workers(log, workers, args.start_timeout)
                for clients in clients_levels:
                    warm_up(base, bodies, 64, wrk)
                    cpu0, host0 = tree_cpu_seconds(proc.pid), host_jiffies()
                    r = drive(base, bodies, 64, clients, args.seconds, threads=args.wrk_threads, wrk=wrk, warm=False)
                    cpu1, host1 = tree_cpu_seconds(proc.pid), host_jiffies()
                    per_request = (cpu1 - cpu0) / max(r["requests"], 1)
                    busy = (host1[0] - host0[0]) / max(host1[1] - host0[1], 1)
                    if with_boxes:
                        best = max(best, r["throughput"])
                    rows.append(
                        [
                            mode,
                            workers,
                            clients,
                            f"{r['throughput']:.0f}",
                            f"{r['p50']:.1f}",
                            f"{r['p99']:.1f}",
                            f"{r['mean_batch']:.1f}",
                            f"{1000 * per_request:.2f}",
                            f"{100 * busy:.0f} %",
                            int(r["errors"]),
                        ]
                    )
                    print(rows[-1], flush=True)
    raw_max = raw_throughput(args.checkpoint, args.precision, args.max_batch, args.device, args.max_batch)
    raw_big = raw_throughput(args.checkpoint, args.precision, 8 * args.max_batch, args.device, args.max_batch)
    raw = max(raw_max, raw_big)
    cores = torch.multiprocessing.cpu_count()
    graphs = "on" if args.device.startswith("cuda") else "n/a"
    lines = [
        f"# The service on {card}",
        "",
        f"{cores} host cores, torch {torch.__version__}. Checkpoint `{args.checkpoint.name}`, {args.precision}, "
        f"CUDA graphs {graphs}, LANDMARKS_MAX_BATCH_SIZE={args.max_batch}, {args.preprocess_threads} pre-processing "
        f"threads per worker; {args.seconds} s per level after a 2 s warm-up; load from wrk "
        f"({args.wrk_threads} threads) on the same host, 64 AFLW2000-3D val photos (450×450 JPEG).",
        "",
        table(
            [
                "requests",
                "workers",
                "connections",
                "req/s",
                "p50 ms",
                "p99 ms",
                "mean batch",
                "server CPU ms / request",
                "host CPU busy",
                "non-2xx / errors",
            ],
            rows,
        ),
        "",
        f"Raw model in the same run (the served engine: graphs, crops from host memory, results back): "
        f"{raw_max:.0f} faces/s at batch {args.max_batch}, {raw_big:.0f} at batch {8 * args.max_batch}. "
        f"Best service rate with caller boxes: {best:.0f} req/s = **{100 * best / raw:.1f} %** of the raw model's "
        f"{raw:.0f} faces/s.",
        "",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

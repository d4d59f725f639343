"""Front-end capacity on CPU: the HTTP + decode (+ detection) + crop path of one service process, network excluded.

    python -m benchmarks.frontend_bench [--clients 1,8,32] [--seconds 10] [--out FILE]

The service runs unchanged on the shipped checkpoint except that :mod:`tests.support.stand_in` puts its
:class:`~tests.support.stand_in.StandInNet` in the network's place: constant heatmaps of the same shape (68 × 32²) at no
cost, decoded, mapped back and answered as usual. So what it measures is the front end a GPU would have to be
fed by. Load from wrk on the same machine (`apt-get install wrk`), 64 AFLW2000-3D
val photos, with caller boxes (decode + crop + one pass) and without (decode + YuNet + two passes). Reported per
level: requests/s, p50, the server process's CPU seconds per request, and from those the requests/s one core
sustains, which divides a GPU's throughput into the front-end cores (and processes) it needs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import machine, publish, table
from benchmarks.service_bench import drive, warm_up, write_bodies
from model.artifacts import SHIPPED_CHECKPOINT
from tests.support.server import running_server, tree_cpu_seconds


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--preprocess-threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p


def main(args: argparse.Namespace) -> str:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the load: apt-get install wrk")
    levels = [int(c) for c in args.clients.split(",")]
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for mode, with_boxes in (("caller boxes", True), ("no boxes (YuNet + 2 passes)", False)):
            bodies = folder / ("boxes" if with_boxes else "plain")
            bodies.mkdir()
            count = write_bodies(bodies, 64, with_boxes=with_boxes)
            settings = {
                "preprocess_threads": str(args.preprocess_threads),
                "torch_threads": "1",
            }
            log = folder / f"server-{bodies.name}.log"
            with running_server(SHIPPED_CHECKPOINT, log, "tests.support.stand_in", **settings) as (base, proc):
                for clients in levels:
                    warm_up(base, bodies, count)
                    before = tree_cpu_seconds(proc.pid)
                    result = drive(base, bodies, count, clients, args.seconds, warm=False)
                    per_request = (tree_cpu_seconds(proc.pid) - before) / max(result["requests"], 1)
                    rows.append(
                        [
                            mode,
                            clients,
                            f"{result['throughput']:.1f}",
                            f"{result['p50']:.0f}",
                            f"{1000 * per_request:.1f}",
                            f"{1 / per_request:.0f}" if per_request > 0 else "-",
                            int(result["errors"]),
                        ]
                    )
                    print(rows[-1], flush=True)
    lines = [
        "# Front-end capacity (network replaced by a negligible stand-in)",
        "",
        f"Machine: {machine()}. One server process, {args.preprocess_threads} pre-processing threads, "
        f"{args.seconds} s per level; wrk shares the machine.",
        "",
        table(
            ["requests", "connections", "req/s", "p50 ms", "server CPU ms / request", "req/s per core", "errors"],
            rows,
        ),
        "",
        "Each level's 2 s warm-up is outside its numbers. Note the two numbers "
        "one needs for a GPU host: req/s per core of the path it will serve, and the GPU's faces/s "
        "(`benchmarks/results/gpu_h100.md`); cores needed = GPU faces/s ÷ (faces per request × req/s per core).",
        "",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

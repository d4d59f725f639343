"""What head pose costs the CPU service: ``python -m benchmarks.pose_cost [--out FILE]``.

The service with caller boxes (the same 64 AFLW2000-3D val bodies as ``benchmarks.service_bench``) with pose on
(the shipped head model) and off (``LANDMARKS_HEAD_MODEL=none``), at 1 and 8 connections, in alternating rounds
(on, off, off, on, ...) so that drift of a shared machine falls on both; load from wrk on the same machine.
Reports each mode's mean req/s over the rounds, the ratio, the server's CPU time per request, and the pose step's
own time per request (``timings_ms.pose`` from the answers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import urllib.request
from pathlib import Path

from benchmarks.common import machine, table
from benchmarks.service_bench import BOUNDARY, drive, warm_up, write_bodies
from model.artifacts import SHIPPED_CHECKPOINT
from tests.support.server import running_server, tree_cpu_seconds

MODES = {"pose on": {}, "pose off": {"head_model": "none"}}


def pose_ms(base: str, bodies: Path) -> float:
    """Median ``timings_ms.pose`` over 20 answers."""
    body = (bodies / "body1.bin").read_bytes()
    times = []
    for _ in range(20):
        request = urllib.request.Request(
            f"{base}/landmarks", data=body, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            times.append(float(json.loads(response.read())["timings_ms"]["pose"]))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--log-dir", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the load: apt-get install wrk")
    args.log_dir.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.clients.split(",")]
    rates: dict[tuple[str, int], list[float]] = {(m, c): [] for m in MODES for c in levels}
    cpu: dict[tuple[str, int], list[float]] = {(m, c): [] for m in MODES for c in levels}
    step_ms = float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp)
        count = write_bodies(bodies, 64)
        for round_ in range(args.rounds):
            order = list(MODES) if round_ % 2 == 0 else list(MODES)[::-1]
            for mode in order:
                log = args.log_dir / f"pose-{mode.split()[1]}.log"
                with running_server(args.checkpoint, log, **MODES[mode]) as (base, proc):
                    if mode == "pose on" and round_ == 0:
                        step_ms = pose_ms(base, bodies)
                    for clients in levels:
                        warm_up(base, bodies, count)
                        before = tree_cpu_seconds(proc.pid)
                        result = drive(base, bodies, count, clients, args.seconds, warm=False)
                        used = tree_cpu_seconds(proc.pid) - before
                        if result["errors"]:
                            raise SystemExit(f"{mode}, {clients} connections: {result['errors']:.0f} errors")
                        rates[(mode, clients)].append(result["throughput"])
                        cpu[(mode, clients)].append(1000 * used / max(result["requests"], 1))
                        print(round_, mode, clients, f"{result['throughput']:.1f} req/s", flush=True)
    rows = []
    for clients in levels:
        on, off = (statistics.mean(rates[(m, clients)]) for m in MODES)
        cpu_on, cpu_off = (statistics.mean(cpu[(m, clients)]) for m in MODES)
        rows.append([clients, f"{on:.1f}", f"{off:.1f}", f"{on / off:.3f}", f"{100 * (1 - on / off):+.1f} %",
                     f"{cpu_on:.1f}", f"{cpu_off:.1f}"])  # fmt: skip
    lines = [
        f"Machine: {machine()}",
        f"Checkpoint: {args.checkpoint.name}; caller boxes; {args.rounds} alternating rounds of {args.seconds} s "
        "per mode and level; load from wrk on the same machine",
        "",
        table(
            [
                "connections",
                "req/s pose on",
                "req/s pose off",
                "on / off",
                "cost",
                "server CPU ms / request, on",
                "off",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"The pose step itself (timings_ms.pose, median of 20 answers, one face): {step_ms:.2f} ms.",
        "Rounds (req/s): " + "; ".join(f"{m} @{c}: " + ", ".join(f"{v:.1f}" for v in r) for (m, c), r in rates.items()),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

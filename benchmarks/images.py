"""Each container image's size and its time from ``podman run`` to ``/health/ready`` (built offline with podman:
:mod:`tests.support.images`).

    python -m benchmarks.images [--runs 3] [--out benchmarks/results/images.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import machine, publish, table
from tests.support.images import base_image, build, container, image_mb, podman_env, podman_problem, wheelhouse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="container starts per image (median reported)")
    p.add_argument("--out", type=Path, default=None)
    return p


def main(args: argparse.Namespace) -> str:
    problem = podman_problem()
    if problem:
        raise SystemExit(problem)
    rows: list[list[object]] = []
    measured: dict[str, tuple[float, float]] = {}  # target: (MB, median ready s)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = podman_env(folder)
        base = base_image(env, folder)
        (folder / "wheels").mkdir()
        with wheelhouse(folder / "wheels") as wheels:
            tags = {target: build(env, target, base, wheels) for target in ("runtime", "slim")}
        sizes = {target: image_mb(env, tag) for target, tag in tags.items()}
        for target, tag in tags.items():
            times = []
            for _ in range(args.runs):
                with container(env, tag) as (_, _, ready_s):
                    times.append(ready_s)
            measured[target] = (sizes[target], statistics.median(times))
            rows.append([target, tag, f"{sizes[target]:.0f}", f"{statistics.median(times):.1f}",
                         " / ".join(f"{t:.1f}" for t in times)])  # fmt: skip
            print(rows[-1], flush=True)
    (torch_mb, torch_s), (slim_mb, slim_s) = measured["runtime"], measured["slim"]
    lines = [
        "# Container images: size and time to ready",
        "",
        f"Machine: {machine()}. podman, images built offline from `docker/Dockerfile` on a local Debian bookworm "
        f"base; time from `podman run` to the first 200 from `/health/ready` (model loaded and warmed up), "
        f"{args.runs} starts each.",
        "",
        table(["target", "image", "size MB", "ready s (median)", "each start, s"], rows),
        "",
        f"Slim / torch: size {slim_mb / torch_mb:.2f}×, time to ready {slim_s / torch_s:.2f}×.",
        "",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

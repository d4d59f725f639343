"""PyTorch against ONNX Runtime, in one run: the engine's faces/s, the service's req/s, and NME on every split.

    python -m benchmarks.runtime_bench [--onnx model/weights/dsc_landmarks_cpu.onnx] [--int8 FILE] [--out FILE]

Engines: torch fp32, torch at the service's ``auto`` precision (bf16 on CPUs with AVX512-BF16/AMX), ONNX Runtime
fp32 (``python -m training.export``) and, with ``--int8``, ONNX Runtime int8 (``training.export --int8``). Faces/s
at batch 1 and 8 on real crops. The service (``dsc-landmarks-serve`` on loopback, each runtime in turn, wrk on the
same machine) with caller boxes and without (YuNet + second pass) at 1 and 8 connections. NME (ground-truth
boxes, through the pipeline) on the val and test splits of AFLW2000-3D (box) and the 300-W subset (inter-ocular).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine, publish, table, timeit
from benchmarks.service_bench import DATA, drive, write_bodies
from model.artifacts import SHIPPED_CHECKPOINT, SHIPPED_ONNX
from model.engine import Engine, EngineOptions
from model.inference import load_for_inference, resolve_precision
from model.onnx_engine import OnnxEngine
from tests.support.server import running_server
from training.datasets import load_samples
from training.evaluate import run as run_pipeline
from training.export import check_crops
from training.metrics import NORMALISERS, nme

W300 = DATA.parent / "300w-subset"
SPLITS = [  # (name, format, root, labels, norm)
    ("AFLW2000-3D", "aflw2000", DATA, "pts", "box"),
    ("300-W subset", "pts_folder", W300, None, "inter_ocular"),
]


def engines(onnx: Path, int8: Path | None) -> dict[str, Engine]:
    import torch

    auto = resolve_precision("auto", torch.device("cpu"))
    found: dict[str, Engine] = {
        "torch fp32": load_for_inference(SHIPPED_CHECKPOINT, EngineOptions(device="cpu", precision="fp32")),
    }
    if auto != "fp32":
        found[f"torch {auto} (auto)"] = load_for_inference(SHIPPED_CHECKPOINT, EngineOptions(device="cpu"))
    found["onnxruntime fp32"] = OnnxEngine(onnx)
    if int8 is not None:
        found["onnxruntime int8 (convs)"] = OnnxEngine(int8)
    return found


def engine_rows(found: dict[str, Engine]) -> list[list[object]]:
    crops = check_crops(128, W300 if (W300 / "val.txt").is_file() else None, count=8)
    rows: list[list[object]] = []
    for name, engine in found.items():
        rates: list[float] = []
        for batch in (1, 8):
            rates.append(batch / timeit(functools.partial(engine.infer, crops[:batch]), min_time=3.0))
        rows.append([name, *(f"{r:.1f}" for r in rates)])
        print(rows[-1], flush=True)
    return rows


def nme_rows(found: dict[str, Engine]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name, engine in found.items():
        cells: list[object] = [name]
        for _, fmt, root, labels, norm in SPLITS:
            for split in ("val", "test"):
                samples = load_samples(fmt, root, split, labels)
                points = run_pipeline(engine, samples, "gt", batch_size=16).points
                truth = np.stack([s.points for s in samples])
                cells.append(f"{100 * float(nme(points, truth, NORMALISERS[norm](truth)).mean()):.3f}")
        rows.append(cells)
        print(rows[-1], flush=True)
    return rows


def service_rows(onnx: Path, seconds: int, folder: Path) -> list[list[object]]:
    rows: list[list[object]] = []
    bodies: dict[bool, tuple[Path, int]] = {}
    for with_boxes in (True, False):
        path = folder / ("boxes" if with_boxes else "plain")
        path.mkdir()
        bodies[with_boxes] = (path, write_bodies(path, 32, with_boxes=with_boxes))
    runtimes: list[tuple[str, dict[str, str]]] = [
        ("torch (auto precision)", {"runtime": "torch"}),
        ("onnxruntime", {"runtime": "onnxruntime", "onnx_model": str(onnx)}),
    ]
    for threads in (2, 1):
        for name, settings in runtimes:
            log = folder / f"server-{settings['runtime']}-{threads}.log"
            with running_server(SHIPPED_CHECKPOINT, log, torch_threads=str(threads), **settings) as (base, _):
                for with_boxes, (path, count) in bodies.items():
                    for clients in (1, 8):
                        result = drive(base, path, count, clients, seconds)
                        mode = "caller boxes" if with_boxes else "YuNet + 2 passes"
                        numbers = [f"{result['throughput']:.2f}", f"{result['p50']:.0f}", f"{result['mean_batch']:.1f}"]
                        rows.append([name, threads, mode, clients, *numbers, int(result["errors"])])
                        print(rows[-1], flush=True)
    return rows


def ratio(rows: list[list[object]], threads: int, clients: int) -> float:
    """ONNX Runtime's req/s over torch's, with caller boxes, at ``threads`` and ``clients``."""
    torch_value, onnx_value = (float(str(r[4])) for r in rows if r[1:4] == [threads, "caller boxes", clients])
    return onnx_value / torch_value


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, default=SHIPPED_ONNX)
    p.add_argument("--int8", type=Path, default=None)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--out", type=Path, default=None)
    return p


def main(args: argparse.Namespace) -> str:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for the load: apt-get install wrk")
    found = engines(args.onnx, args.int8)
    version = next(iter(found.values())).version
    eng = engine_rows(found)
    accuracy = nme_rows(found)
    with tempfile.TemporaryDirectory() as tmp:
        service = service_rows(args.onnx, args.seconds, Path(tmp))
    ratios = {(threads, clients): ratio(service, threads, clients) for threads in (2, 1) for clients in (1, 8)}
    lines = [
        "# Runtimes: PyTorch against ONNX Runtime",
        "",
        f"Machine: {machine()}. Model {version}; all numbers from one run of `python -m benchmarks.runtime_bench`.",
        "",
        "## Engine: faces/s on real 300-W val crops",
        "",
        table(["engine", "batch 1", "batch 8"], eng),
        "",
        "## Accuracy: NME % (ground-truth boxes, through the pipeline)",
        "",
        table(
            ["engine", "AFLW2000-3D val (box)", "AFLW2000-3D test", "300-W val (inter-ocular)", "300-W test"],
            accuracy,
        ),
        "",
        f"## Service: req/s on loopback (wrk, 32 AFLW2000-3D val photos, {args.seconds} s per level)",
        "",
        "`threads`: the runtime's intra-op threads (`LANDMARKS_TORCH_THREADS`; 2 is torch's default on 2 cores).",
        "",
        table(["runtime", "threads", "requests", "connections", "req/s", "p50 ms", "mean batch", "errors"], service),
        "",
        "ONNX Runtime / torch service with caller boxes: "
        + "; ".join(f"{t} thread(s), {c} connection(s) {r:.2f}×" for (t, c), r in ratios.items())
        + ".",
        "",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

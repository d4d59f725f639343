"""GPU benchmark: raw inference throughput per preset, batch and precision, eager vs CUDA graphs.

    python -m benchmarks.gpu_bench --out benchmarks/results/gpu_<card>.md [--checkpoint model/weights/...pt]

Needs a CUDA device. For each preset and precision: faces/s of the whole inference path (normalise, network,
sub-pixel decode of both stages, inverse affine, confidence, copy of the results to the host) at each batch size,
launched eagerly and replayed from CUDA graphs (:class:`model.inference.CudaGraphs`), with the achieved share of
the card's matmul peak measured in the same run; batch-1 latency both ways; and, with ``--checkpoint``, the
largest difference between graphed and eager landmarks of the shipped weights (must be ~0: same kernels).
Crops start on the device, so this is the network's pace, not the host's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch

from benchmarks.common import publish, table
from benchmarks.model_bench import flops_per_face
from model.config import preset
from model.engine import EngineOptions
from model.geometry import as_box, box_from_points
from model.inference import InferenceModel, Precision, load_for_inference, prepare
from model.network import build_model
from model.pipeline import Framing, face_crop
from training.datasets import load_image, load_samples
from training.metrics import box_size, nme

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def cuda_timeit(fn: object, min_time: float = 1.0, warmup: int = 3) -> float:
    """Median seconds per call (each call synchronised), for at least ``min_time`` seconds."""
    assert callable(fn)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < min_time and len(times) < 2000):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def matmul_peak(dtype: torch.dtype, n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    return 2 * n**3 / cuda_timeit(lambda: a @ b) / 1e12


def engine(name: str, precision: Precision, graphs: bool, max_batch: int) -> InferenceModel:
    config = preset(name)
    torch.manual_seed(0)
    options = EngineOptions(device="cuda", precision=precision, cuda_graphs=graphs, max_batch_size=max_batch)
    return prepare(build_model(config), config, options)


def inputs(size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    crops = torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8, device="cuda")
    return crops, torch.eye(2, 3, device="cuda").expand(batch, 2, 3).contiguous()


def throughput_rows(
    name: str, precisions: list[str], batches: list[int], peaks: dict[str, float]
) -> list[list[object]]:
    config = preset(name)
    gflop = flops_per_face(config) / 1e9
    rows: list[list[object]] = []
    for precision in precisions:
        for graphs in (False, True):
            eng = engine(name, precision, graphs, max(batches))  # type: ignore[arg-type]
            cells: list[object] = [precision, "graphs" if graphs else "eager"]
            best = 0.0
            for batch in batches:
                crops, inverse = inputs(config.input_size, batch)
                rate = batch / cuda_timeit(lambda crops=crops, inverse=inverse, eng=eng: eng(crops, inverse))
                best = max(best, rate)
                cells.append(round(rate, 1))
            tflops = best * gflop / 1000
            cells += [round(tflops, 1), f"{100 * tflops / peaks[precision]:.1f} %"]
            rows.append(cells)
            del eng
            torch.cuda.empty_cache()
    return rows


def latency_rows(names: list[str], precisions: list[str]) -> list[list[object]]:
    rows: list[list[object]] = []
    for name in names:
        config = preset(name)
        for precision in precisions:
            crops, inverse = inputs(config.input_size, 1)
            times = []
            for graphs in (False, True):
                eng = engine(name, precision, graphs, 1)  # type: ignore[arg-type]
                times.append(1000 * cuda_timeit(lambda e=eng, c=crops, i=inverse: e(c, i), min_time=2.0))
                forward = eng._graphs._run if eng._graphs is not None else eng._heads  # the network alone
                times.append(1000 * cuda_timeit(lambda f=forward, c=crops: f(c), min_time=2.0))
            rows.append([name, precision, *(round(t, 3) for t in times), f"{times[0] / times[2]:.1f}x"])
    return rows


def face_batch(data: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Real faces of a 300-W style folder: crops from their ground-truth boxes, inverse affines, true points."""
    samples = load_samples("pts_folder", data, split)
    crops, inverse = [], []
    for sample in samples:
        crop = face_crop(load_image(sample.image), Framing(as_box(box_from_points(sample.points))), size)
        crops.append(crop.image)
        inverse.append(crop.inverse)
    truth = np.stack([s.points for s in samples])
    return torch.from_numpy(np.stack(crops)), torch.from_numpy(np.stack(inverse)).float(), truth


def equality(checkpoint: Path, precision: str, data: Path, split: str, batch: int = 37) -> list[object]:
    """NME of graphed vs eager on real faces, run in batches of ``batch`` (padded to 64 when graphed)."""
    mode = cast(Precision, precision)
    eager = load_for_inference(checkpoint, EngineOptions(device="cuda", precision=mode, cuda_graphs=False))
    graphed = load_for_inference(checkpoint, EngineOptions(device="cuda", precision=mode, max_batch_size=64))
    crops, inverse, truth = face_batch(data, split, eager.config.input_size)
    results = []
    for eng in (eager, graphed):
        outs = [eng(crops[i : i + batch], inverse[i : i + batch]) for i in range(0, len(crops), batch)]
        results.append(torch.cat([o.points for o in outs]).double().numpy())
    scale = box_size(truth)
    nmes = [100 * float(nme(points, truth, scale).mean()) for points in results]
    diff = np.abs(results[0] - results[1]).max(axis=-1)
    return [precision, len(truth), f"{nmes[0]:.4f}", f"{nmes[1]:.4f}", f"{np.median(diff):.2e}", f"{diff.max():.3f}"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="cpu,paper")
    p.add_argument("--precisions", default="fp16,bf16")
    p.add_argument("--batch-sizes", default="1,8,64,256,1024", help="for the cpu preset; others stop at 64")
    p.add_argument("--checkpoint", type=Path, default=None, help="also compare graphed and eager on these weights")
    p.add_argument("--data", type=Path, default=None, help="300-W style folder of real faces for that comparison")
    p.add_argument("--split", default="val", help="split file of --data")
    p.add_argument("--out", type=Path, default=None)
    return p


@torch.inference_mode()
def main(args: argparse.Namespace) -> str:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    names = [n for n in args.presets.split(",") if n]
    precisions = args.precisions.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    peaks = {p: matmul_peak(DTYPES[p]) for p in precisions}
    card = torch.cuda.get_device_name()
    lines = [
        f"# GPU benchmark on {card}",
        "",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}. Matmul peak (8192³) measured in this run: "
        + ", ".join(f"{p} {v:.0f} TFLOP/s" for p, v in peaks.items())
        + ". Random weights (speed does not depend on them); crops start on the device.",
        "",
    ]
    for name in names:
        use = batches if name == "cpu" else [b for b in batches if b <= 64]
        headers = ["precision", "launch", *(str(b) for b in use), "best TFLOP/s", "of matmul peak"]
        lines += [
            f"## `{name}`: faces/s by batch size",
            "",
            table(headers, throughput_rows(name, precisions, use, peaks)),
            "",
        ]
    lines += [
        "## Batch-1 latency (ms, median)",
        "",
        table(
            ["preset", "precision", "eager path", "eager network", "graphed path", "graphed network", "path speed-up"],
            latency_rows(names, precisions),
        ),
        "",
        "*path* = everything `InferenceModel.__call__` does for one face; *network* = normalise, both stages and "
        "their decoding (what one graph holds).",
        "",
    ]
    if args.checkpoint is not None and args.data is not None:
        rows = [equality(args.checkpoint, p, args.data, args.split) for p in precisions]
        lines += [
            f"## Graphed vs eager on `{args.checkpoint.name}`, real faces of `{args.data}` ({args.split})",
            "",
            "Batches of 37 (the graph pads them to its 64 bucket; cuDNN may pick other kernels per batch size).",
            "",
            table(
                ["precision", "faces", "box NME eager %", "box NME graphed %", "median point diff px", "max px"], rows
            ),
            "",
        ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""Model benchmark: faces/s per preset, batch size and precision; FLOPs per face; share of the matmul peak.

    python -m benchmarks.model_bench [--presets cpu,paper_s4] [--batch-sizes 1,2,4,8,16,32] [--out FILE]
    python -m benchmarks.model_bench --presets cpu --modes bf16 --batch-sizes 8 --compile   # + torch.compile

With ``--compile`` each preset's last mode at the largest batch size is also timed through ``torch.compile``
(inductor), alternating with eager in rounds so that machine noise hits both alike.

Throughput is the whole inference path the service runs per batch (normalise, network, sub-pixel decode,
inverse affine). Achieved GFLOP/s are compared with the best large-matmul rate of the same dtype on the same
threads, measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path
from typing import cast

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import machine, table, timeit
from model.codec import decode
from model.config import ModelConfig, preset
from model.inference import InferenceModel, Precision, cpu_supports_bf16
from model.network import LandmarkNet, build_model, normalize_input, to_channels_last

MODES: dict[str, tuple[Precision, bool]] = {  # name: (precision, channels_last)
    "fp32": ("fp32", False),
    "fp32+cl": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16+cl": ("bf16", True),
}


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of an n x n x n matmul in ``dtype`` (best of the timed runs)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    seconds = timeit(lambda: a @ b, min_time=2.0)
    return 2 * n**3 / seconds / 1e9


def flops_per_face(config: ModelConfig) -> float:
    net = build_model(config).eval()
    x = torch.randn(1, 3, config.input_size, config.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return float(counter.get_total_flops())


def engine_for(config: ModelConfig, mode: str) -> InferenceModel:
    precision, channels_last = MODES[mode]
    net = build_model(config).eval()
    if channels_last:
        to_channels_last(net, refiner=True)
    return InferenceModel(
        net=net, config=config, device=torch.device("cpu"), precision=precision, channels_last=channels_last
    )


def random_batch(config: ModelConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random uint8 crops of the preset's input size and identity crop -> image affines."""
    crops = torch.randint(0, 255, (batch, config.input_size, config.input_size, 3), dtype=torch.uint8)
    return crops, torch.eye(2, 3).expand(batch, 2, 3).contiguous()


def throughput(config: ModelConfig, mode: str, batch: int) -> float:
    engine = engine_for(config, mode)
    crops, inverse = random_batch(config, batch)
    seconds = timeit(lambda: engine(crops, inverse), min_time=1.5 if batch * config.input_size < 4096 else 3.0)
    return batch / seconds


def compile_comparison(config: ModelConfig, mode: str, batch: int, rounds: int = 3) -> list[list[object]]:
    """Faces/s of eager vs ``torch.compile`` for the same weights, alternating in ``rounds``; compile seconds."""
    eager = engine_for(config, mode)
    crops, inverse = random_batch(config, batch)
    compiled = dataclasses.replace(eager, net=cast(LandmarkNet, torch.compile(eager.net)))
    start = time.perf_counter()
    compiled(crops, inverse)
    compile_s = time.perf_counter() - start
    rows: list[list[object]] = []
    for r in range(rounds):
        fps = [batch / timeit(functools.partial(e, crops, inverse), min_time=3.0) for e in (eager, compiled)]
        rows.append([f"round {r + 1}", f"{fps[0]:.1f}", f"{fps[1]:.1f}", f"{fps[1] / fps[0]:.2f}"])
        print(f"compile {config.name} {mode} b{batch}: {rows[-1]}", flush=True)
    rows.append(["first call (compile) s", "", f"{compile_s:.0f}", ""])
    return rows


def stage_costs(config: ModelConfig, mode: str, batch: int) -> list[tuple[str, float]]:
    """Milliseconds per face of each stage at one batch size."""
    engine = engine_for(config, mode)
    net = engine.net
    assert isinstance(net, LandmarkNet)
    x = normalize_input(random_batch(config, batch)[0])
    if engine.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if engine.precision == "bf16" else None

    def ac() -> torch.autocast:
        return torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    with torch.inference_mode(), ac():
        m = net.lai(x)
        h0 = net.kernel_conv(m)
        hf = h0 + net.dsc(h0)
    out = []
    for name, fn in (
        ("FC-DenseNet56 subnet", lambda: net.lai(x)),
        ("kernel convolution", lambda: net.kernel_conv(m)),
        ("dilated skip refiner", lambda: net.dsc(h0)),
        ("sub-pixel decode", lambda: decode(hf)),
    ):

        def run(fn=fn):  # type: ignore[no-untyped-def]
            with torch.inference_mode(), ac():
                fn()

        out.append((name, 1000 * timeit(run, min_time=1.0) / batch))
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="cpu,paper_s4,paper")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--modes", default="fp32,fp32+cl,bf16,bf16+cl")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also compare torch.compile with eager")
    parser.add_argument("--out", type=Path)
    return parser


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m.startswith("fp32") or cpu_supports_bf16()]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    report = [f"Machine: {machine()}", ""]
    peaks = {"fp32": matmul_peak(torch.float32)}
    if cpu_supports_bf16():
        peaks["bf16"] = matmul_peak(torch.bfloat16)
    report += ["Matmul peak (2048³, same threads): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()), ""]
    print("\n".join(report), flush=True)
    for name in args.presets.split(","):
        config = preset(name)
        flops = flops_per_face(config)
        # The stride-1 paper preset is ~40x the cost of the others: small batches only.
        sizes = [b for b in batches if b <= 2] if config.heatmap_stride == 1 else batches
        rows = []
        for mode in modes:
            row: list[object] = [mode]
            best = 0.0
            for b in sizes:
                fps = throughput(config, mode, b)
                best = max(best, fps)
                row.append(f"{fps:.1f}")
            peak = peaks["bf16" if mode.startswith("bf16") else "fp32"]
            row += [f"{best * flops / 1e9:.0f}", f"{100 * best * flops / 1e9 / peak:.0f} %"]
            rows.append(row)
            print(f"{name} {mode}: {row}", flush=True)
        block = [
            f"### `{name}` ({config.input_size}² input, {config.heatmap_size}² heatmaps): "
            f"{flops / 1e9:.2f} GFLOP per face",
            "",
            "Faces per second by batch size:",
            "",
            table(["mode", *[str(b) for b in sizes], "best GFLOP/s", "of matmul peak"], rows),
            "",
        ]
        if config.heatmap_stride != 1:
            best_mode = modes[-1]
            costs = stage_costs(config, best_mode, 8)
            block += [
                f"Stage costs ({best_mode}, batch 8, ms per face):",
                "",
                table(["stage", "ms / face"], [(n, f"{c:.2f}") for n, c in costs]),
                "",
            ]
        if args.compile:
            rows_c = compile_comparison(config, modes[-1], sizes[-1])
            block += [
                f"torch.compile vs eager ({modes[-1]}, batch {sizes[-1]}, faces/s, alternating rounds):",
                "",
                table(["", "eager", "compiled", "compiled / eager"], rows_c),
                "",
            ]
        print("\n".join(block), flush=True)
        report += block
    if args.out:
        args.out.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

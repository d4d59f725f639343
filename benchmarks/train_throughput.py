"""Training throughput: does the input pipeline keep up with the training step?

    python -m benchmarks.train_throughput [--config training/configs/all_scratch_cpu.yaml] [--device auto]
                                          [--steps 30] [--workers 2] [--out FILE]

Three ways to feed the same training step (the config's model, batch size, optimiser and precision), each for
``--steps`` steps after a warm-up, in one run:

* **step only** — one augmented batch already on the device, repeated: the ceiling;
* **on-device augmentation** — :mod:`training.device_augment` (the training set held on the device);
* **CPU loader** — the DataLoader with ``--workers`` processes (:class:`training.datasets.LandmarkDataset`).

Reported: samples/s of each and their ratio to the step alone (the target for on-device augmentation is ≥ 0.8),
and the input pipeline alone (no step) for both.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from benchmarks.common import machine, publish, table
from model.inference import resolve_device
from model.network import build_model
from training.config import load_config
from training.datasets import LandmarkDataset, MixtureSampler, load_samples
from training.device_augment import DeviceAugmenter, FaceBank
from training.engine import train_one_epoch
from training.train import build_optimizer, make_loader, resolve_amp


class Fixed:
    """``steps`` batches that are all the same batch, already on the device."""

    def __init__(self, batch: dict[str, torch.Tensor], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):  # type: ignore[no-untyped-def]
        return itertools.repeat(self.batch, self.steps)


class Take:
    """The first ``steps`` batches of an iterable, with a length."""

    def __init__(self, batches: Iterable[dict[str, torch.Tensor]], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):  # type: ignore[no-untyped-def]
        return itertools.islice(iter(self.batches), self.steps)


def pipeline_rate(
    batches: Iterable[dict[str, torch.Tensor]], steps: int, batch_size: int, device: torch.device
) -> float:
    """Samples/s of an input pipeline alone, batches moved to the device."""
    it = iter(batches)
    next(it)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        for value in batch.values():
            value.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("training/configs/all_scratch_cpu.yaml"))
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    return p


def main(args: argparse.Namespace) -> str:
    cfg = load_config(args.config)
    device = resolve_device(args.device)
    config = cfg.network_config()
    samples = [s for spec in cfg.train for s in load_samples(spec.format, spec.root, spec.split, spec.labels)]
    dataset = LandmarkDataset(samples, config, cfg.augment, seed=cfg.seed)
    sampler = MixtureSampler([len(samples)], [1.0], None, cfg.seed, 0, 1)
    began = time.perf_counter()
    bank = FaceBank.from_samples(samples, config, device)
    bank_s = time.perf_counter() - began
    augmenter = DeviceAugmenter(bank, config, cfg.augment, cfg.seed)
    net = build_model(config).to(device)
    amp = resolve_amp(cfg.amp, device)
    optimizer, scheduler = build_optimizer(cfg, net, args.steps)
    order = list(sampler)
    loader = make_loader(dataset, cfg.batch_size, args.workers, shuffle=True, sampler=sampler)

    def feeds() -> dict[str, Iterable[dict[str, torch.Tensor]]]:
        device_batches = augmenter.epoch(order, cfg.batch_size, epoch=0)
        return {
            "step only (one batch on the device)": Fixed(next(iter(device_batches)), args.steps + 2),
            "on-device augmentation": Take(device_batches, args.steps + 2),
            f"CPU loader ({args.workers} workers)": Take(loader, args.steps + 2),
        }

    rates: dict[str, float] = {}
    for name, batches in feeds().items():
        train_one_epoch(net, Take(batches, 2), optimizer, None, device, amp, 0, cfg.loss(),
                        cfg.channels_last, show_progress=False)  # fmt: skip  # warm-up
        stats = train_one_epoch(net, Take(batches, args.steps), optimizer, scheduler, device, amp, 0,
                                cfg.loss(), cfg.channels_last, show_progress=False)  # fmt: skip
        rates[name] = stats["samples_per_s"]
        print(name, f"{rates[name]:.1f}", flush=True)
    ceiling = next(iter(rates.values()))
    rows: list[list[object]] = [[n, f"{r:.1f}", f"{r / ceiling:.2f}"] for n, r in rates.items()]
    alone = {
        "on-device augmentation": pipeline_rate(
            augmenter.epoch(order, cfg.batch_size, 1), args.steps, cfg.batch_size, device
        ),
        f"CPU loader ({args.workers} workers)": pipeline_rate(loader, args.steps, cfg.batch_size, device),
    }
    lines = [
        "# Training throughput: the input pipeline against the training step",
        "",
        f"Machine: {machine()}; device {device}, precision {amp.precision}. Config `{args.config}` "
        f"(`{config.name}` preset, batch {cfg.batch_size}, {len(samples)} training faces); {args.steps} steps "
        "each after 2 warm-up steps, one run of `python -m benchmarks.train_throughput`.",
        "",
        table(["fed by", "samples/s", "ratio to the step alone"], rows),
        "",
        "The input pipelines alone (no training step), samples/s: "
        + ", ".join(f"{n} {r:.0f}" for n, r in alone.items())
        + f". Holding the faces on the device took {bank_s:.1f} s "
        f"({bank.images.numel() / 1e6:.0f} MB, {bank.images.shape[-1]}² crops).",
        "",
    ]
    return publish(lines, args.out)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

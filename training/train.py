"""Train the two-stage network: ``python -m training.train --config training/configs/<name>.yaml``.

Works alone or under ``torchrun`` (DistributedDataParallel: NCCL on GPUs, gloo on CPU). Writes to
``output_dir``: ``config.yaml`` (resolved), ``log.jsonl`` (one line per epoch), ``last.pt`` (model checkpoint)
plus ``last_state.pt`` (optimiser, scheduler, epoch: what ``--resume`` needs), and ``best.pt`` (lowest ``val_select``,
the weighted mean of the val sets' stage-2 NMEs that the config's ``select`` declares; the format the service
loads). Training data may be several data sets, each drawn by its ``weight``; each val set is logged on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from model.artifacts import CheckpointError
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.inference import InferenceModel, cpu_supports_bf16, resolve_device
from model.network import LandmarkNet, build_model, to_channels_last
from model.pipeline import PipelineOptions
from training import label_offsets
from training.cli import run_cli
from training.config import TrainConfig, dump_config, load_config
from training.datasets import LandmarkDataset, MixtureSampler, load_samples
from training.device_augment import DeviceAugmenter, FaceBank
from training.engine import Amp, lr_lambda_cosine, train_one_epoch
from training.evaluate import run as run_pipeline
from training.metrics import NORMALISERS, nme

log = logging.getLogger("training.train")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML training config (training/configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-3 --set epochs=10 (repeatable)",
    )
    parser.add_argument("--output-dir", type=Path, help="shortcut for --set output_dir=...")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/last_state.pt")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    return parser


def code_version() -> str:
    """Git commit of the working tree, when there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_amp(mode: str, device: torch.device) -> Amp:
    """``auto``: bf16 on CUDA with bf16 support (else fp16 + GradScaler), bf16 on CPUs with native bf16, else off."""
    if mode == "off":
        return Amp(None)
    if mode == "auto":
        if device.type == "cuda":
            mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mode = "bf16" if cpu_supports_bf16() else "off"
    if mode == "off":
        return Amp(None)
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("amp fp16 needs CUDA; use bf16 on CPU")
        return Amp(torch.float16, torch.amp.GradScaler("cuda"))
    return Amp(torch.bfloat16)


def build_optimizer(
    cfg: TrainConfig, model: nn.Module, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    o = cfg.optim
    params = model.parameters()
    optimizer: torch.optim.Optimizer
    if o.name == "rmsprop":
        optimizer = torch.optim.RMSprop(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    elif o.name == "adam":
        optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    total = cfg.epochs * steps_per_epoch
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if o.schedule == "step":
        milestones = [m * steps_per_epoch for m in o.milestones]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=o.gamma)
    elif o.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=total, pct_start=0.25)
    else:
        warmup = int(o.warmup_epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda_cosine(total, warmup))
    return optimizer, scheduler


def make_loader(
    dataset: LandmarkDataset, batch_size: int, workers: int, shuffle: bool, sampler: Sampler[int] | None = None
) -> DataLoader[dict[str, torch.Tensor]]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=shuffle,
        persistent_workers=False,  # workers must see set_epoch(): persistent ones keep epoch-0 augmentation
        pin_memory=torch.cuda.is_available(),
    )


def validate(
    net: LandmarkNet,
    config: ModelConfig,
    dataset: LandmarkDataset,
    norm: str,
    device: torch.device,
    amp: Amp,
    cfg: TrainConfig,
) -> dict[str, float]:
    """NME (%) of both stages on one validation set with its normalisation, through the serving pipeline with
    ground-truth boxes, one pass each (``training.evaluate --boxes gt`` runs the served default, which re-frames
    the few boxes its landmarks disagree with: a half-trained network's would, so selection keeps one pass)."""
    was_training = net.training
    net.eval()
    engine = InferenceModel(
        net=net, config=config, device=device, precision=amp.precision, channels_last=cfg.channels_last
    )
    preds = run_pipeline(engine, dataset.samples, "gt", PipelineOptions(passes=1), batch_size=cfg.batch_size, passes=1)
    net.train(was_training)
    gt = np.stack([s.points for s in dataset.samples])
    scale = NORMALISERS[norm](gt)
    refined, coarse = nme(preds.points, gt, scale), nme(preds.coarse_points, gt, scale)
    return {
        "nme": 100 * float(refined.mean()),
        "median": 100 * float(np.median(refined)),
        "stage1": 100 * float(coarse.mean()),
    }


def validate_all(
    net: LandmarkNet,
    config: ModelConfig,
    val_sets: dict[str, tuple[LandmarkDataset, str]],
    device: torch.device,
    amp: Amp,
    cfg: TrainConfig,
) -> dict[str, float]:
    """Every val set's NME as ``val_<name>_nme_<norm>`` (+ ``_median``, ``_stage1``) and ``val_select``, the
    weighted mean the config's ``select`` declares, on which ``best.pt`` is chosen."""
    record: dict[str, float] = {}
    nmes: dict[str, float] = {}
    for name, (dataset, norm) in val_sets.items():
        result = validate(net, config, dataset, norm, device, amp, cfg)
        key = f"val_{name}_nme_{norm}"
        record.update({key: result["nme"], f"{key}_median": result["median"], f"{key}_stage1": result["stage1"]})
        nmes[name] = result["nme"]
    weights = cfg.selection_weights()
    record["val_select"] = sum(w * nmes[n] for n, w in weights.items()) / sum(weights.values())
    return record


def build_train_set(cfg: TrainConfig, model_config: ModelConfig) -> tuple[LandmarkDataset, list[int]]:
    """All training sets in one index space (one augmentation), and each one's size for the sampler."""
    parts = [
        [x if s.source is None else replace(x, source=s.source) for x in load_samples(s.format, s.root, s.split,
                                                                                      s.labels, cfg.skip_bad)]
        for s in cfg.train
    ]  # fmt: skip
    samples = [x for part in parts for x in part]
    offsets = None
    if cfg.flip_offsets is not None:
        points = np.stack([x.points for x in samples])
        offsets = label_offsets.per_sample(label_offsets.load(cfg.flip_offsets), [x.source for x in samples], points)
    dataset = LandmarkDataset(samples, model_config, cfg.augment, seed=cfg.seed, flip_offsets=offsets)
    return dataset, [len(part) for part in parts]


def build_val_sets(cfg: TrainConfig, model_config: ModelConfig) -> dict[str, tuple[LandmarkDataset, str]]:
    return {
        s.key: (LandmarkDataset(load_samples(s.format, s.root, s.split, s.labels, cfg.skip_bad), model_config), s.norm)
        for s in cfg.val
    }


class Run:
    """Distributed context: rank, world size, device."""

    def __init__(self, device_arg: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.world_size > 1
        if self.distributed:
            backend = "nccl" if torch.cuda.is_available() and device_arg != "cpu" else "gloo"
            dist.init_process_group(backend)
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
                self.device = torch.device("cuda", self.local_rank)
            else:
                self.device = torch.device("cpu")
        else:
            self.device = resolve_device(device_arg)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            dist.barrier()  # no rank tears the group down while another still talks to it
            dist.destroy_process_group()


def replica_spread(model: nn.Module, run: Run) -> float:
    """Largest difference of any parameter between replicas (0 when they are identical)."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    if not run.distributed:
        return 0.0
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).abs().max())


def build_model_for(cfg: TrainConfig, model_config: ModelConfig, run: Run) -> tuple[LandmarkNet, nn.Module]:
    """The network (fresh, or ``init_checkpoint`` for fine-tuning) on the run's device, wrapped for DDP."""
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    net = build_model(model_config)
    if cfg.init_checkpoint is not None:
        net, _, _ = load_checkpoint(cfg.init_checkpoint, expected=model_config)
    net = net.to(run.device)
    if cfg.channels_last:
        to_channels_last(net)
    model: nn.Module = net
    if run.distributed:
        model = DistributedDataParallel(net, device_ids=[run.local_rank] if run.device.type == "cuda" else None)
    return net, model


def resume(
    state_path: Path,
    net: LandmarkNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    amp: Amp,
) -> tuple[int, float]:
    """Restore the training state written by :func:`save_state`; returns (first epoch to run, best criterion)."""
    if not state_path.is_file():
        raise CheckpointError(f"--resume: {state_path} does not exist")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if amp.scaler is not None and state.get("scaler"):
        amp.scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]) + 1, float(state["best"])


def save_state(
    path: Path,
    net: LandmarkNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    amp: Amp,
    epoch: int,
    best: float,
) -> None:
    state = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": amp.scaler.state_dict() if amp.scaler else {},
        "epoch": epoch,
        "best": best,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def main(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.config, overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args.device)
    out_dir = cfg.output_dir
    model_config = cfg.network_config()
    seed_everything(cfg.seed + run.rank)

    train_set, sizes = build_train_set(cfg, model_config)
    val_sets = build_val_sets(cfg, model_config)
    weights = [s.weight for s in cfg.train]
    sampler = MixtureSampler(sizes, weights, cfg.epoch_size, cfg.seed, run.rank, run.world_size)
    loader = make_loader(train_set, cfg.batch_size, cfg.workers, shuffle=True, sampler=sampler)
    steps_per_epoch = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    augmenter = None
    if cfg.augment_on_device:
        log.info("holding %d training faces on %s for on-device augmentation", len(train_set), run.device)
        bank = FaceBank.from_samples(train_set.samples, model_config, run.device, train_set.flip_offsets)
        augmenter = DeviceAugmenter(bank, model_config, cfg.augment, cfg.seed + run.rank)

    net, model = build_model_for(cfg, model_config, run)
    amp = resolve_amp(cfg.amp, run.device)
    optimizer, scheduler = build_optimizer(cfg, model, steps_per_epoch)
    state_path = out_dir / "last_state.pt"
    start_epoch, best = resume(state_path, net, optimizer, scheduler, amp) if args.resume else (0, float("inf"))

    if run.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(cfg))
        log.info(
            "training %s on %d samples (%s), %d draws per epoch, val %s, %d epochs from %d, device %s, amp %s, "
            "world %d",
            model_config.name,
            len(train_set),
            " + ".join(f"{s.key} {n} x{w:g}" for s, n, w in zip(cfg.train, sizes, weights, strict=True)),
            len(sampler) * run.world_size,
            {name: len(ds) for name, (ds, _) in val_sets.items()},
            cfg.epochs,
            start_epoch,
            run.device,
            amp.precision,
            run.world_size,
        )

    summary: dict[str, Any] = {}
    for epoch in range(start_epoch, min(cfg.epochs, cfg.stop_after or cfg.epochs)):
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        batches = loader if augmenter is None else augmenter.epoch(list(sampler), cfg.batch_size, epoch)
        stats = train_one_epoch(
            model,
            batches,
            optimizer,
            scheduler,
            run.device,
            amp,
            epoch,
            cfg.loss(),
            cfg.channels_last,
            cfg.optim.grad_clip,
            cfg.max_steps_per_epoch,
            show_progress=run.main and sys.stderr.isatty(),
        )
        record: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats}
        if run.main and val_sets:
            record.update(validate_all(net, model_config, val_sets, run.device, amp, cfg))
        record["replica_spread"] = replica_spread(net, run)
        if run.main:
            best = save_epoch(out_dir, net, model_config, cfg, epoch, record, best)
            save_state(state_path, net, optimizer, scheduler, amp, epoch, best)
        summary = record
        run.barrier()
    run.close()
    return summary


def save_epoch(
    out_dir: Path,
    net: LandmarkNet,
    model_config: ModelConfig,
    cfg: TrainConfig,
    epoch: int,
    record: dict[str, Any],
    best: float,
) -> float:
    """Write ``last.pt``, ``best.pt`` when the selection criterion improved, and the epoch's log line."""
    metric = record.get("val_select", -epoch)
    metadata = training_metadata(cfg, epoch, record)
    save_checkpoint(out_dir / "last.pt", net, model_config, metadata)
    if metric < best:
        best = metric
        save_checkpoint(out_dir / "best.pt", net, model_config, metadata)
        record["best"] = True
    with (out_dir / "log.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    log.info(
        "epoch %d %s",
        epoch,
        " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch"),
    )
    return best


def training_metadata(cfg: TrainConfig, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint metadata: where the weights came from and how good they were."""
    return {
        "name": "dsc-landmarks",
        "version": f"{cfg.model}-e{epoch + 1}",
        "preset": cfg.model,
        "code_version": code_version(),
        "training": {
            "data": {
                "train": [spec.model_dump(mode="json") for spec in cfg.train],
                "val": [spec.model_dump(mode="json") for spec in cfg.val],
                "select": cfg.selection_weights(),
            },
            "epochs_done": epoch + 1,
            "config": cfg.model_dump(mode="json"),
            "torch": str(torch.__version__),
            "machine": platform.machine(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "metrics": {k: v for k, v in record.items() if k.startswith("val_")},
    }


def cli() -> None:
    run_cli(main, get_args_parser())


if __name__ == "__main__":
    cli()

"""Train the two-stage network: ``python -m training.train --config training/configs/<name>.yaml``.

Works alone or under ``torchrun`` (DistributedDataParallel: NCCL on GPUs, gloo on CPU). Writes to
``output_dir``: ``config.yaml`` (resolved), ``log.jsonl`` (one line per epoch), ``last.pt`` (model checkpoint)
plus ``last_state.pt`` (optimiser, scheduler, epoch: what ``--resume`` needs), and ``best.pt`` (best stage-2
box NME on the validation set, in the format the service loads).
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.inference import cpu_supports_bf16, resolve_device
from model.network import LandmarkNet, build_model, to_channels_last
from training.config import TrainConfig, dump_config, load_config
from training.datasets import DataError, LandmarkDataset, load_samples
from training.engine import Amp, lr_lambda_cosine, predict, train_one_epoch
from training.metrics import box_size, nme

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
    net: LandmarkNet, config: ModelConfig, dataset: LandmarkDataset, device: torch.device, amp: Amp, cfg: TrainConfig
) -> dict[str, float]:
    """Box-normalised NME (%) of both stages on the validation set, through the serving path."""
    loader = make_loader(dataset, cfg.batch_size, 0, shuffle=False)
    preds = predict(net, config, loader, device, amp.precision, cfg.channels_last)
    gt = np.stack([s.points for s in dataset.samples])
    norm = box_size(gt)
    refined, coarse = nme(preds.points, gt, norm), nme(preds.coarse_points, gt, norm)
    return {
        "val_nme_box": 100 * float(refined.mean()),
        "val_nme_box_median": 100 * float(np.median(refined)),
        "val_nme_box_stage1": 100 * float(coarse.mean()),
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    cfg = load_config(args.config, overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args.device)
    out_dir = cfg.output_dir
    model_config = cfg.network_config()
    seed_everything(cfg.seed + run.rank)

    train_samples = load_samples(cfg.train.format, cfg.train.root, cfg.train.split, cfg.train.labels, cfg.skip_bad)
    val_samples = (
        load_samples(cfg.val.format, cfg.val.root, cfg.val.split, cfg.val.labels, cfg.skip_bad) if cfg.val else []
    )
    train_set = LandmarkDataset(train_samples, model_config, cfg.augment, seed=cfg.seed)
    val_set = LandmarkDataset(val_samples, model_config) if val_samples else None
    sampler: DistributedSampler[int] | None = DistributedSampler(train_set, seed=cfg.seed) if run.distributed else None
    loader = make_loader(train_set, cfg.batch_size, cfg.workers, shuffle=True, sampler=sampler)
    steps_per_epoch = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)

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
    amp = resolve_amp(cfg.amp, run.device)
    optimizer, scheduler = build_optimizer(cfg, model, steps_per_epoch)

    start_epoch, best = 0, float("inf")
    state_path = out_dir / "last_state.pt"
    if args.resume:
        if not state_path.is_file():
            raise CheckpointError(f"--resume: {state_path} does not exist")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if amp.scaler is not None and state.get("scaler"):
            amp.scaler.load_state_dict(state["scaler"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best"])

    if run.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(dump_config(cfg))
        log.info(
            "training %s on %d samples (%d val), %d epochs from %d, device %s, amp %s, world %d",
            model_config.name,
            len(train_set),
            len(val_samples),
            cfg.epochs,
            start_epoch,
            run.device,
            amp.precision,
            run.world_size,
        )

    summary: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        train_set.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        stats = train_one_epoch(
            model,
            loader,
            optimizer,
            scheduler,
            run.device,
            amp,
            epoch,
            cfg.coarse_weight,
            cfg.channels_last,
            cfg.optim.grad_clip,
            cfg.max_steps_per_epoch,
            show_progress=run.main and sys.stderr.isatty(),
        )
        record: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats}
        if run.main and val_set is not None:
            record.update(validate(net, model_config, val_set, run.device, amp, cfg))
        record["replica_spread"] = replica_spread(net, run)
        if run.main:
            metric = record.get("val_nme_box", -epoch)
            metadata = training_metadata(cfg, epoch, record)
            save_checkpoint(out_dir / "last.pt", net, model_config, metadata)
            if metric < best:
                best = metric
                save_checkpoint(out_dir / "best.pt", net, model_config, metadata)
                record["best"] = True
            torch.save(
                {
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": amp.scaler.state_dict() if amp.scaler else {},
                    "epoch": epoch,
                    "best": best,
                },
                state_path,
            )
            with (out_dir / "log.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            log.info(
                "epoch %d %s",
                epoch,
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items() if k != "epoch"
                ),
            )
        summary = record
        run.barrier()
    run.close()
    return summary


def training_metadata(cfg: TrainConfig, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint metadata: where the weights came from and how good they were."""
    return {
        "name": "dsc-landmarks",
        "version": f"{cfg.model}-e{epoch + 1}",
        "preset": cfg.model,
        "code_version": code_version(),
        "training": {
            "data": {
                "train": cfg.train.model_dump(mode="json"),
                "val": cfg.val.model_dump(mode="json") if cfg.val else None,
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args()
    try:
        main(args)
    except (ValueError, DataError, CheckpointError) as exc:
        log.error("%s", exc)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    cli()

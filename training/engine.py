"""One training epoch and one evaluation pass, shaped like torchvision's reference scripts."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from model.inference import Precision
from model.network import normalize_input
from training.losses import TwoStageLoss


@dataclass
class Amp:
    """Autocast settings resolved for a device (see ``training.train.resolve_amp``)."""

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None = None

    def context(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    @property
    def precision(self) -> Precision:
        if self.dtype == torch.bfloat16:
            return "bf16"
        return "fp16" if self.dtype == torch.float16 else "fp32"


class Batches(Protocol):
    """An epoch of training batches with a length: a DataLoader, or ``training.device_augment.EpochBatches``."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]: ...


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    amp: Amp,
    epoch: int,
    loss_fn: TwoStageLoss | None = None,
    channels_last: bool = False,
    grad_clip: float | None = None,
    max_steps: int | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """Train for one pass over ``loader``; the scheduler steps per batch. Returns mean loss and timing."""
    loss_fn = loss_fn or TwoStageLoss()
    model.train()
    total, count, start = 0.0, 0, time.perf_counter()
    steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    bar = tqdm(total=steps, desc=f"epoch {epoch}", disable=not show_progress, dynamic_ncols=True, mininterval=1.0)
    for step, batch in enumerate(loader):
        if step >= steps:
            break
        # made on the device already (training.device_augment), or uint8 crops from the loader
        x = batch["input"] if "input" in batch else normalize_input(batch["image"].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = batch["heatmaps"].to(device, non_blocking=True)
        with amp.context(device):
            points = batch["points"].to(device, non_blocking=True) if loss_fn.needs_points else None
            loss = loss_fn(model(x), target, points)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch} step {step}")
        optimizer.zero_grad(set_to_none=True)
        if amp.scaler is not None:
            amp.scaler.scale(loss).backward()
            amp.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if amp.scaler is not None:
            amp.scaler.step(optimizer)
            amp.scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item() * len(x)
        count += len(x)
        bar.set_postfix(loss=f"{total / count:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    return {"train_loss": total / max(count, 1), "train_time_s": elapsed, "samples_per_s": count / max(elapsed, 1e-9)}


def lr_lambda_cosine(total_steps: int, warmup_steps: int) -> Any:
    """Linear warm-up then cosine decay to 0, as a LambdaLR factor."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor

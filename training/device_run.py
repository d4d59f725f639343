"""Train on a lent GPU in one call: ``python -m training.device_run --config CONFIG --budget-s 480 --out $OUT``.

A lent device gives a session 15 minutes in all, so the run is sized by time, not epochs: a short probe (a few
dozen steps on the device, on-device augmentation) measures samples per second, the number of epochs that fits
``--budget-s`` (validation included) is set, and the config's schedule is built for exactly that many, so the
learning rate anneals to its end inside the budget. The run writes ``best.pt``, ``last.pt``, ``log.jsonl`` and
``config.yaml`` under ``--out`` (the device tool brings ``$OUT`` back), and ``summary.json``: the probe, the epochs
chosen, the wall time and the best val NMEs.

Here, before the call: the training data pre-cropped into the git-ignored ``cache/`` (it travels with ``carry``,
32 MB for both train and val splits) and the wheels the device lacks (pydantic and tqdm) in ``.whl``::

    python -m training.precrop --config training/configs/finetune_noflip_l1.yaml --out cache/device
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 -d .whl pydantic==2.* pydantic-core annotated-types typing-inspection tqdm

The device command (``carry: [cache/device, .whl]``)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site \\
    && PYTHONUNBUFFERED=1 python3 -m training.device_run --config cache/device/config.yaml --budget-s 480 --out $OUT \
       --set init_checkpoint=model/weights/dsc_landmarks_cpu.pt   # runs/ stays here; the shipped weights travel

The checkpoint it brings back ships only if it wins on val (``python -m training.ship --run <folder>``). A test
dry-runs this on the CPU with a tiny model and a budget of seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from training import train
from training.cli import run_cli

log = logging.getLogger("training.device_run")

PROBE_STEPS = 40  # training steps the throughput probe times (after its first, which warms up)


def run_train(config: Path, overrides: list[str], device: str) -> dict[str, Any]:
    args = train.get_args_parser().parse_args(["--config", str(config), "--device", device])
    args.overrides = overrides
    return train.main(args)


def probe(config: Path, out: Path, device: str) -> dict[str, float]:
    """Samples/s of the training step on this device and seconds of one validation pass."""
    began = time.perf_counter()
    record = run_train(
        config,
        ["epochs=1", f"max_steps_per_epoch={PROBE_STEPS}", f"output_dir={out / 'probe'}", "init_checkpoint=null"],
        device,
    )
    total = time.perf_counter() - began
    return {"samples_per_s": float(record["samples_per_s"]), "seconds": total,
            "train_seconds": float(record["train_time_s"])}  # fmt: skip


def plan_epochs(budget_s: float, samples_per_s: float, epoch_draws: int, fixed_s: float, per_epoch_s: float) -> int:
    """How many epochs fit ``budget_s``: each costs its draws at the probed rate plus ``per_epoch_s`` (validation,
    checkpoints); ``fixed_s`` is spent once (start-up)."""
    per_epoch = epoch_draws / max(samples_per_s, 1e-9) + per_epoch_s
    return max(1, math.floor((budget_s - fixed_s) / per_epoch))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="a training config (the pre-cropped one)")
    p.add_argument("--budget-s", type=float, default=480, help="wall seconds for the whole run, probe included")
    p.add_argument("--out", type=Path, required=True, help="where the run goes ($OUT on the device)")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = train.load_config(args.config, args.overrides)
    measured = probe(args.config, args.out, args.device)
    draws = cfg.epoch_size or sum(len(train.load_samples(s.format, s.root, s.split, s.labels)) for s in cfg.train)
    spent = time.perf_counter() - began
    epochs = plan_epochs(
        args.budget_s - spent,
        measured["samples_per_s"],
        draws,
        fixed_s=measured["seconds"] - measured["train_seconds"],
        per_epoch_s=measured["seconds"] - measured["train_seconds"],
    )
    log.info("probe: %.0f samples/s; %d draws per epoch; %d epochs fit the budget", measured["samples_per_s"],
             draws, epochs)  # fmt: skip
    overrides = [*args.overrides, f"epochs={epochs}", f"output_dir={args.out}", "max_steps_per_epoch=null"]
    record = run_train(args.config, overrides, args.device)
    lines = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    best = min(lines, key=lambda r: r.get("val_select", math.inf))
    summary = {
        "probe": measured,
        "epoch_draws": draws,
        "epochs": epochs,
        "wall_s": time.perf_counter() - began,
        "budget_s": args.budget_s,
        "best_epoch": best["epoch"],
        "best": {k: v for k, v in best.items() if k.startswith("val_")},
        "last": {k: v for k, v in record.items() if k.startswith("val_")},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for stale in (args.out / "probe").glob("*"):
        stale.unlink()
    (args.out / "probe").rmdir()
    (args.out / "last_state.pt").unlink(missing_ok=True)  # optimiser state: not needed to ship, and large
    log.info("done in %.0f s: best epoch %d, val_select %.3f", summary["wall_s"], best["epoch"],
             best.get("val_select", math.nan))  # fmt: skip
    return summary


def cli() -> None:
    run_cli(main, get_args_parser())


if __name__ == "__main__":
    cli()

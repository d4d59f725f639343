"""How every ``python -m training.<script>`` starts: INFO logging, and a bad input (a data, checkpoint or value
error: a missing folder, a malformed spec, a checkpoint that does not fit) as one logged line and exit status 2,
never a traceback."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from model.artifacts import CheckpointError

T = TypeVar("T")


def run_cli(main: Callable[[argparse.Namespace], T], parser: argparse.ArgumentParser) -> T:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return main(parser.parse_args())
    except (ValueError, CheckpointError) as exc:  # training.datasets.DataError is a ValueError
        logging.getLogger("training").error("%s", exc)
        raise SystemExit(2) from exc


SPEC = "FORMAT:ROOT:SPLIT[:LABELS]"  # a data set on the command line (training.datasets.samples_from_spec)


def checkpoint_to_checkpoint(description: str | None, writes: str) -> argparse.ArgumentParser:
    """The parser of a step that reads ``--checkpoint`` and writes ``--out``, the same weights with ``writes``
    added to the metadata (calibration, conventions)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help=f"checkpoint to write (weights + {writes})")
    parser.add_argument("--report-dir", type=Path, default=None, help="default: beside --out")
    return parser

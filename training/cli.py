"""How every ``python -m training.<script>`` starts: INFO logging, and a bad input (a data, checkpoint or value
error: a missing folder, a malformed spec, a checkpoint that does not fit) as one logged line and exit status 2,
never a traceback."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
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

"""The service with a zero-cost stand-in for the network, to measure everything around it (front-end benchmarks).

    python -m tests.support.stand_in --host 127.0.0.1 --port 8000     # like dsc-landmarks-serve, same LANDMARKS_*

:class:`StandInNet` gives constant heatmaps of the checkpoint's output shape (68 x 32²); the engine around it is
the real one (decode, inverse affine, confidence), and so is everything else in the service. Its landmarks are
meaningless: benchmarks only, never in the product's code path.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import Tensor, nn

from app.batcher import inference_thread
from app.main import create_app, read_settings
from app.server import server_args, uvicorn_options
from app.service import load_service
from app.settings import Settings
from app.startup import Parts, StartupError, load_parts
from model.checkpoint import calibration_from_metadata, load_checkpoint
from model.config import ModelConfig
from model.inference import InferenceModel, prepare
from model.network import Heatmaps


class StandInNet(nn.Module):
    """Constant heatmaps of a config's output shape at no cost, in :class:`model.network.LandmarkNet`'s place."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        size = config.heatmap_size
        peak = torch.zeros(config.num_landmarks, size, size)
        peak[:, size // 2, size // 2] = 1.0
        self.peak: Tensor
        self.register_buffer("peak", peak)

    def forward(self, x: Tensor) -> Heatmaps:
        maps = self.peak.expand(x.shape[0], -1, -1, -1)
        return Heatmaps(maps, maps)


def load_stand_in(settings: Settings) -> InferenceModel:
    """The served checkpoint's engine (config, metadata, calibration, device) with the stand-in as its network."""
    _, config, metadata = load_checkpoint(settings.checkpoint)
    options = settings.engine_options()
    return prepare(StandInNet(config), config, options, calibration_from_metadata(metadata), metadata)


def stand_in_parts(settings: Settings) -> Parts:
    """The service's parts (detector, head model, the checked settings) with the stand-in engine, loaded on the
    inference thread that will run it."""
    parts = load_parts(settings, runtime=False)
    worker = inference_thread()
    return Parts(worker.submit(load_stand_in, settings).result(), worker, parts.detector, parts.head)


def main(argv: list[str]) -> None:
    import uvicorn

    args = server_args(argv)
    settings = read_settings()
    if settings.workers != 1:
        sys.exit("the stand-in serves one process (LANDMARKS_WORKERS=1)")
    try:
        parts = stand_in_parts(settings)
    except StartupError as exc:
        sys.exit(f"cannot start: {exc}")
    app = create_app(settings, connect=functools.partial(load_service, parts=parts))
    uvicorn.run(app, **uvicorn_options(settings, args))


if __name__ == "__main__":
    main(sys.argv[1:])

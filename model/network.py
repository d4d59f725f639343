"""The two-stage network: FC-DenseNet56 -> kernel convolution -> dilated skip convolution refiner."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from model.config import ModelConfig
from model.dsc import DilatedSkipConvolution, KernelConvolution
from model.fc_densenet import FCDenseNet


class Heatmaps(NamedTuple):
    """Both stages' heatmaps, each ``(N, K, h, w)``: H0 (coarse, stage 1) and H_f (refined, stage 2)."""

    coarse: Tensor
    refined: Tensor


class LandmarkNet(nn.Module):
    """H0 = FCDenseNet(x) * K_sigma (eqs. 2-3); H_f = H0 + DSC(H0) (eqs. 4-6).

    Input: ``(N, 3, S, S)`` float images normalised as in :func:`normalize_input`. Output: :class:`Heatmaps`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.lai = FCDenseNet(
            num_outputs=config.num_landmarks,
            stem_channels=config.stem_channels,
            growth_rate=config.growth_rate,
            layers_per_block=config.layers_per_block,
            bottleneck_layers=config.bottleneck_layers,
            dropout=config.dropout,
            stem_stride=config.stem_stride,
            head_stride=config.head_stride,
        )
        self.kernel_conv = KernelConvolution(config.num_landmarks, config.kernel_size, config.kernel_sigma)
        self.dsc = DilatedSkipConvolution(config.num_landmarks, config.dsc_width, config.dsc_dilations)

    def forward(self, x: Tensor) -> Heatmaps:
        h0 = self.kernel_conv(self.lai(x))
        return Heatmaps(coarse=h0, refined=h0 + self.dsc(h0))


def build_model(config: ModelConfig) -> LandmarkNet:
    """The one way to build the network for a configuration (training, serving and tests all use it)."""
    return LandmarkNet(config)


# ImageNet statistics are irrelevant here; a fixed affine map of uint8 RGB to roughly [-1, 1] is enough and is
# the same in training and serving.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 1.0 / 127.5


def normalize_input(images_uint8_nhwc: Tensor) -> Tensor:
    """``(N, S, S, 3)`` uint8 RGB crops -> ``(N, 3, S, S)`` float32 network input in [-1, 1]."""
    return (images_uint8_nhwc.permute(0, 3, 1, 2).float() - PIXEL_MEAN) * PIXEL_SCALE


def to_channels_last(net: LandmarkNet, refiner: bool = False) -> LandmarkNet:
    """Switch to NHWC weights (faster with bf16 and on GPUs); returns ``net``.

    By default the refiner stays NCHW: for *training*, oneDNN in torch 2.13 returns non-finite bf16 weight
    gradients for channels_last dilated convolutions (dilations 4 and 8; see ``tests/model/test_network.py``).
    Inference is unaffected, so it passes ``refiner=True``.
    """
    (net if refiner else net.lai).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return net

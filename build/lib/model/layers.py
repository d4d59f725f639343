"""FC-DenseNet building blocks (Jégou et al., "The One Hundred Layers Tiramisu", 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DenseLayer(nn.Sequential):
    """BN - ReLU - 3x3 conv - dropout, producing ``growth_rate`` new feature maps."""

    def __init__(self, in_channels: int, growth_rate: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, kernel_size=3, padding=1, bias=True),
            nn.Dropout2d(dropout),
        )


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each seeing the concatenation of the block input and all earlier outputs.

    Returns the input concatenated with the new maps (``in + num_layers * growth`` channels), or only the new
    maps when ``new_only`` (the bottleneck and the up path, so upsampling cost stays linear in depth).
    """

    def __init__(
        self, in_channels: int, growth_rate: int, num_layers: int, dropout: float, new_only: bool = False
    ) -> None:
        super().__init__()
        self.new_only = new_only
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, dropout) for i in range(num_layers)
        )
        self.out_channels = (0 if new_only else in_channels) + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features[1:] if self.new_only else features, dim=1)


class TransitionDown(nn.Sequential):
    """BN - ReLU - 1x1 conv (same width) - dropout - 2x2 max pool."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=1, bias=True),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """3x3 transposed conv with stride 2 (exact doubling), then concatenation with the skip connection."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return torch.cat([self.up(x), skip], dim=1)

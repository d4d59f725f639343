"""FC-DenseNet56, the local-appearance initialisation (LAI) subnet of §3.1 and Table 1."""

from __future__ import annotations

from torch import Tensor, nn

from model.layers import DenseBlock, TransitionDown, TransitionUp


class FCDenseNet(nn.Module):
    """Fully convolutional DenseNet mapping an image to ``num_outputs`` response maps M.

    Input ``(N, 3, S, S)``; output ``(N, num_outputs, S / (stem_stride * head_stride), ...)``. With the
    FC-DenseNet56 numbers (stem 48, growth 12, 5 x 4 layers, bottleneck 4) the feature-map counts follow Table 1
    of the paper and the subnet has about 1.39 M parameters for 68 outputs. No softmax: heatmap regression.
    """

    def __init__(
        self,
        num_outputs: int,
        stem_channels: int = 48,
        growth_rate: int = 12,
        layers_per_block: tuple[int, ...] = (4, 4, 4, 4, 4),
        bottleneck_layers: int = 4,
        dropout: float = 0.2,
        stem_stride: int = 1,
        head_stride: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem_channels, kernel_size=3, stride=stem_stride, padding=1, bias=True)

        channels = stem_channels
        skip_channels: list[int] = []
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        for num_layers in layers_per_block:
            block = DenseBlock(channels, growth_rate, num_layers, dropout)
            self.down_blocks.append(block)
            channels = block.out_channels
            skip_channels.append(channels)
            self.transitions_down.append(TransitionDown(channels, dropout))

        self.bottleneck = DenseBlock(channels, growth_rate, bottleneck_layers, dropout, new_only=True)
        channels = self.bottleneck.out_channels

        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level, num_layers in reversed(list(enumerate(layers_per_block))):
            self.transitions_up.append(TransitionUp(channels, channels))
            last = level == 0
            block = DenseBlock(channels + skip_channels[level], growth_rate, num_layers, dropout, new_only=not last)
            self.up_blocks.append(block)
            channels = block.out_channels

        self.pool: nn.Module = nn.AvgPool2d(head_stride) if head_stride > 1 else nn.Identity()
        self.head = nn.Conv2d(channels, num_outputs, kernel_size=1, bias=True)
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        skips: list[Tensor] = []
        for block, down in zip(self.down_blocks, self.transitions_down, strict=True):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, block in zip(self.transitions_up, self.up_blocks, strict=True):
            x = block(up(x, skips.pop()))
        return self.head(self.pool(x))

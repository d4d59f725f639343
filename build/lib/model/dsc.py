"""Kernel convolution (eq. 3) and the dilated skip convolution refiner (eqs. 4-6, Table 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


def gaussian_kernel_1d(size: int, sigma: float) -> Tensor:
    """Normalised 1-D Gaussian of odd ``size`` centred on its middle tap."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def gaussian_kernel_2d(size: int, sigma: float) -> Tensor:
    """The 45x45 K_sigma of eq. 3 as an explicit 2-D kernel (the outer product of the 1-D one)."""
    k = gaussian_kernel_1d(size, sigma)
    return torch.outer(k, k)


class KernelConvolution(nn.Module):
    """Fixed, non-trainable Gaussian blur applied to every channel separately: H0 = M * K_sigma.

    The paper describes a grouped convolution with a 45x45 kernel. A Gaussian is separable, so this runs it as a
    horizontal then a vertical depthwise 1-D pass (2 x 45 instead of 45 x 45 multiply-adds per pixel); the
    result equals the 2-D grouped convolution with zero padding (tested to 1e-5). The kernel is a buffer, so
    it moves with the module, is saved in the state dict and receives no gradient.
    """

    kernel: Tensor

    def __init__(self, channels: int, size: int = 45, sigma: float = 1.0) -> None:
        super().__init__()
        self.channels = channels
        self.size = size
        self.sigma = sigma
        self.register_buffer("kernel", gaussian_kernel_1d(size, sigma))

    def forward(self, x: Tensor) -> Tensor:
        pad = self.size // 2
        k = self.kernel.to(dtype=x.dtype)
        horizontal = k.view(1, 1, 1, -1).expand(self.channels, 1, 1, self.size)
        vertical = k.view(1, 1, -1, 1).expand(self.channels, 1, self.size, 1)
        x = F.conv2d(x, horizontal, padding=(0, pad), groups=self.channels)
        return F.conv2d(x, vertical, padding=(pad, 0), groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, size={self.size}, sigma={self.sigma}"


class DilatedSkipConvolution(nn.Module):
    """Seven 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 32 and dense skip connections.

    Layer n sees the concatenation [H0, H1, ..., H(n-1)] (eq. 5) and is zero-padded by its dilation so every
    map keeps the heatmap size. Layers 1-6 output ``width`` maps followed by ReLU; layer 7 outputs one map per
    landmark, H_DSC, and the refined heatmap is H_f = H0 + H_DSC (eq. 6).

    Deviation, on purpose: layer 7 has no ReLU. With one, H_DSC >= 0 and the refiner could only raise H0,
    never remove a false peak; it would also start dead for negative pre-activations. The last layer is
    initialised near zero (std 1e-3) so that training starts from H_f ~ H0 and learns a correction, as eq. 6
    intends, while every layer still receives a gradient from the first step.
    """

    def __init__(self, channels: int, width: int = 68, dilations: tuple[int, ...] = (1, 1, 2, 4, 8, 16, 32)) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        in_channels = channels
        for i, d in enumerate(dilations):
            last = i == len(dilations) - 1
            conv = nn.Conv2d(in_channels, channels if last else width, kernel_size=3, padding=d, dilation=d)
            self.layers.append(conv if last else nn.Sequential(conv, nn.ReLU(inplace=True)))
            in_channels += width
        final = self.layers[-1]
        assert isinstance(final, nn.Conv2d)
        nn.init.normal_(final.weight, std=1e-3)
        if final.bias is not None:
            nn.init.zeros_(final.bias)

    def forward(self, h0: Tensor) -> Tensor:
        """Return H_DSC for the coarse heatmaps ``h0`` of shape (N, K, h, w)."""
        features = [h0]
        for layer in self.layers:
            x = torch.cat(features, dim=1)
            if self.training:
                # oneDNN (torch 2.13 CPU) returns non-finite bf16 weight gradients for channels_last inputs at
                # dilations 4 and 8; NCHW inputs are exact. Inference keeps the faster layout.
                x = x.contiguous()
            features.append(layer(x))
        return features[-1]

"""Model configuration: one frozen dataclass, one builder per preset with the numbers in view.

Presets differ in size only, never in structure:

============  ==========  ==============  ==========  =========================================
preset        input size  heatmap stride  heatmaps    use
============  ==========  ==============  ==========  =========================================
``paper``     256         1               256 x 256   the paper's text (§3.1, heatmaps at input size)
``paper_s4``  256         4               64 x 64     the authors' published code
``cpu``       128         4               32 x 32     trainable on a 2-core CPU; the shipped model
============  ==========  ==============  ==========  =========================================

The heatmap stride is split between a strided stem convolution (stride 2 for heatmap strides 2 and 4) and a
2x2 average pool before the 1x1 output convolution (for stride 4), so the FC-DenseNet56 body is the same in
every preset and only the resolution it runs at changes.

Sigmas are in heatmap pixels. The target Gaussian (eq. 2) has ``heatmap_sigma``; the fixed kernel convolution
(eq. 3) has ``kernel_sigma``. The kernel is normalised to sum 1 (a blur that keeps the mass of M), and its sigma
is kept below the target sigma so that H0 = M * K can still match the target: M then only has to be a
sharper Gaussian of sigma sqrt(heatmap_sigma**2 - kernel_sigma**2). The paper gives no value; the authors'
code uses a very small one. We use 1.0 (targets 1.5) at stride 4 and 2.0 (targets 3.0) at stride 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DILATIONS: tuple[int, ...] = (1, 1, 2, 4, 8, 16, 32)  # Table 2


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network and its heatmap codec."""

    name: str = "cpu"
    num_landmarks: int = 68
    input_size: int = 128
    heatmap_stride: int = 4
    # FC-DenseNet56 (Jégou et al. 2017): 3x3 stem to 48 channels, growth 12, 4 layers per block, 5 levels.
    stem_channels: int = 48
    growth_rate: int = 12
    layers_per_block: tuple[int, ...] = (4, 4, 4, 4, 4)
    bottleneck_layers: int = 4
    dropout: float = 0.2
    # Kernel convolution (eq. 3) and target heatmaps (eq. 2), sigmas in heatmap pixels.
    kernel_size: int = 45
    kernel_sigma: float = 1.0
    heatmap_sigma: float = 1.5
    # Dilated skip convolution refiner (eqs. 4-6, Table 2).
    dsc_width: int = 68
    dsc_dilations: tuple[int, ...] = field(default=DILATIONS)

    def __post_init__(self) -> None:
        if self.heatmap_stride not in (1, 2, 4):
            raise ValueError(f"heatmap_stride must be 1, 2 or 4, got {self.heatmap_stride}")
        multiple = 2 ** len(self.layers_per_block) * self.stem_stride
        if self.input_size % multiple:
            raise ValueError(f"input_size {self.input_size} must be a multiple of {multiple}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if not 0 < self.kernel_sigma < self.heatmap_sigma:
            raise ValueError("need 0 < kernel_sigma < heatmap_sigma (see model/config.py)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def stem_stride(self) -> int:
        """Stride of the first 3x3 convolution."""
        return 1 if self.heatmap_stride == 1 else 2

    @property
    def head_stride(self) -> int:
        """Average-pool factor in front of the final 1x1 convolution."""
        return self.heatmap_stride // self.stem_stride

    @property
    def heatmap_size(self) -> int:
        return self.input_size // self.heatmap_stride

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), as stored in checkpoints."""
        out = asdict(self)
        out["layers_per_block"] = list(self.layers_per_block)
        out["dsc_dilations"] = list(self.dsc_dilations)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("layers_per_block", "dsc_dilations"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def paper() -> ModelConfig:
    """The paper's text: 256x256 input, heatmaps at input resolution (stride 1)."""
    return ModelConfig(name="paper", input_size=256, heatmap_stride=1, kernel_sigma=2.0, heatmap_sigma=3.0)


def paper_s4() -> ModelConfig:
    """The authors' published code: 256x256 input, 64x64 heatmaps."""
    return ModelConfig(name="paper_s4", input_size=256, heatmap_stride=4, kernel_sigma=1.0, heatmap_sigma=1.5)


def cpu() -> ModelConfig:
    """CPU-trainable size of the same network: 128x128 input, 32x32 heatmaps."""
    return ModelConfig(name="cpu", input_size=128, heatmap_stride=4, kernel_sigma=1.0, heatmap_sigma=1.5)


PRESETS = {"paper": paper, "paper_s4": paper_s4, "cpu": cpu}


def preset(name: str) -> ModelConfig:
    """Look a preset up by name (for command lines and config files)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None

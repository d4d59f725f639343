import dataclasses

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from model.config import ModelConfig, cpu, paper, paper_s4, preset
from model.dsc import KernelConvolution, gaussian_kernel_2d
from model.network import build_model, to_channels_last
from tests.conftest import tiny_config


def test_fc_densenet56_has_about_1_39_million_parameters():
    model = build_model(cpu())
    count = sum(p.numel() for p in model.lai.parameters())
    assert abs(count - 1.39e6) / 1.39e6 < 0.03


@pytest.mark.parametrize("builder", [paper, paper_s4, cpu])
def test_presets_share_structure(builder):
    config = builder()
    reference = cpu()
    model = build_model(config)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in build_model(reference).named_parameters()]
    assert config.dsc_dilations == (1, 1, 2, 4, 8, 16, 32)
    assert preset(config.name) == config


@pytest.mark.parametrize("builder", [paper, paper_s4, cpu])
def test_forward_shapes_for_every_preset(builder):
    # Full width, smallest legal input for the heavy presets: the structure is what is under test.
    config = builder()
    small = dataclasses.replace(config, input_size=32 * config.stem_stride)
    model = build_model(small).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, small.input_size, small.input_size))
    side = small.input_size // small.heatmap_stride
    assert out.coarse.shape == out.refined.shape == (1, 68, side, side)


def test_cpu_preset_output_is_32_squared():
    model = build_model(cpu()).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    assert out.refined.shape == (2, 68, 32, 32)
    assert torch.isfinite(out.refined).all()


def test_every_parameter_receives_a_gradient_and_nothing_is_nan():
    config = tiny_config()
    model = build_model(config).train()
    out = model(torch.randn(2, 3, config.input_size, config.input_size))
    (out.refined.square().mean() + out.coarse.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_refined_is_coarse_plus_correction():
    config = tiny_config()
    model = build_model(config).eval()
    x = torch.randn(1, 3, config.input_size, config.input_size)
    with torch.no_grad():
        out = model(x)
        correction = model.dsc(out.coarse)
    torch.testing.assert_close(out.refined, out.coarse + correction)


def test_kernel_convolution_is_fixed():
    model = build_model(tiny_config())
    assert not any("kernel_conv" in n for n, _ in model.named_parameters())
    assert "kernel_conv.kernel" in model.state_dict()


@pytest.mark.parametrize(("size", "sigma", "side"), [(45, 1.0, 32), (45, 2.0, 64), (9, 1.5, 20)])
def test_separable_kernel_equals_grouped_2d_convolution(size, sigma, side):
    channels = 5
    x = torch.randn(2, channels, side, side)
    separable = KernelConvolution(channels, size, sigma)(x)
    weight = gaussian_kernel_2d(size, sigma).expand(channels, 1, size, size)
    grouped = F.conv2d(x, weight, padding=size // 2, groups=channels)
    assert (separable - grouped).abs().max() < 1e-5


def test_dsc_dilations_and_padding_keep_size():
    model = build_model(cpu())
    convs = [m for m in model.dsc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 8, 16, 32]
    assert all(c.padding[0] == c.dilation[0] and c.kernel_size == (3, 3) for c in convs)
    # layer n sees H0 plus n-1 earlier outputs (eq. 5)
    assert [c.in_channels for c in convs] == [68 + i * 68 for i in range(7)]


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of"):
        ModelConfig(input_size=100)
    with pytest.raises(ValueError, match="kernel_sigma"):
        ModelConfig(kernel_sigma=2.0, heatmap_sigma=1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"bogus": 1})


def test_bf16_channels_last_training_step_has_finite_gradients():
    # Regression: oneDNN gave non-finite bf16 weight gradients for channels_last dilated convs (d = 4, 8).
    torch.manual_seed(0)
    model = to_channels_last(build_model(cpu())).train()
    x = torch.randn(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    (out.refined.float().square().sum() + out.coarse.float().square().sum()).backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == []

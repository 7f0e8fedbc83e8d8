"""Every dynamic-conv layer against the naive per-sample loop, forward and gradients.

The expected output recomputes the layer from its own routing with
``per_sample_dynamic_conv2d`` (one ``F.conv2d`` per sample with ``sum_k A W``), so it
checks the batch-folded contract op, the padding convention and the ODConv scalings. Inputs are
``random_images`` (per-sample contrast and shift), every layer's attention varies across the batch and
giving sample n sample n-1's routing fails the comparison (:mod:`guards`).
"""

from dataclasses import dataclass

import pytest
import torch
from guards import assert_attention_varies, assert_fails, attention_spread, rolled_attention

from dyconv_deploy.inputs import random_images
from dyconv_deploy.nn import CondConv2d, DynamicConv2d, DyNetConv2d, ODConv2d, set_temperature
from dyconv_deploy.ops import per_sample_dynamic_conv2d
from dyconv_deploy.tolerance import TOLERANCES, compare


@dataclass(frozen=True)
class Config:
    """One layer geometry; ``padding`` is (top, left, bottom, right)."""

    name: str
    kernel: int
    in_channels: int = 4
    out_channels: int = 6
    stride: int = 1
    padding: tuple = (0, 0, 0, 0)
    dilation: int = 1
    groups: int = 1
    bias: bool = True
    num_kernels: int = 4
    batch: int = 3
    size: int = 7


# A curated cover: kernel 1/3/5, stride 1/2, asymmetric padding, dilation 2, groups 1/2/depthwise,
# bias on/off, K 1/4/8, batch 1/3.
CONFIGS = [
    Config("1x1-K1-batch1", 1, num_kernels=1, batch=1),
    Config("3x3-pad1-nobias", 3, padding=(1, 1, 1, 1), bias=False),
    Config("3x3-stride2-asymmetric-groups2-K8", 3, stride=2, padding=(1, 0, 2, 1), groups=2, num_kernels=8),
    Config("5x5-dilation2-depthwise-batch1", 5, in_channels=6, padding=(4, 4, 4, 4), dilation=2, groups=6,
           batch=1, size=9),
    Config("3x3-stride2-depthwise-K8", 3, in_channels=6, stride=2, padding=(1, 1, 1, 1), groups=6, num_kernels=8),
    Config("5x5-stride2-K1-nobias", 5, stride=2, padding=(2, 2, 2, 2), num_kernels=1, bias=False),
    Config("3x3-dilation2-groups2", 3, padding=(2, 2, 2, 2), dilation=2, groups=2, batch=1),
    Config("1x1-stride2-groups2-K8-nobias", 1, stride=2, groups=2, num_kernels=8, bias=False),
]

LAYERS = {
    # reduction 1: with 4 input channels the paper's 4 leaves one hidden unit, 0 after ReLU for every sample
    "dynamic_conv": lambda c, **kw: DynamicConv2d(num_kernels=c.num_kernels, reduction=1, **kw),
    "condconv": lambda c, **kw: CondConv2d(num_experts=c.num_kernels, **kw),
    "odconv": lambda c, **kw: ODConv2d(num_kernels=c.num_kernels, **kw),
    "dynet": lambda c, **kw: DyNetConv2d(num_kernels=c.num_kernels, **kw),
}


def make_layer(family: str, config: Config):
    layer = LAYERS[family](config, in_channels=config.in_channels, out_channels=config.out_channels,
                           kernel_size=config.kernel, stride=config.stride, padding=config.padding,
                           dilation=config.dilation, groups=config.groups, bias=config.bias)
    set_temperature(layer, 1.0)  # peaked attention exercises the mixing more than the training-time 30
    return layer.eval()


def naive_forward(layer, x):
    """The layer's function spelled out with the per-sample loop."""
    routing = layer.routing(x)
    if routing.channel is not None:
        x = x * routing.channel[:, :, None, None]
    y = per_sample_dynamic_conv2d(x, routing.attention, layer.weight, layer.bias, routing.spatial, layer.stride,
                                  layer.padding, layer.dilation, layer.groups)
    return y if routing.filter is None else y * routing.filter[:, :, None, None]


def random_input(config: Config) -> torch.Tensor:
    """``[batch, in_channels, size, size]`` random images (global RNG)."""
    return random_images((config.batch, config.in_channels, config.size, config.size))


def static_by_construction(family: str, config: Config) -> bool:
    """Softmax attention over one kernel is 1: the layer is a static conv."""
    return family == "dynamic_conv" and config.num_kernels == 1


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@pytest.mark.parametrize("family", LAYERS)
def test_forward_matches_per_sample_loop(family, config):
    layer = make_layer(family, config)
    x = random_input(config)

    def comparison():
        with torch.no_grad():
            return compare(layer(x), naive_forward(layer, x), TOLERANCES["layer"])

    result = comparison()
    assert result.passed, str(result)
    if config.batch == 1:
        return  # one sample: nothing to mix up
    if static_by_construction(family, config):
        assert attention_spread(layer, x) == {}
        return
    assert_attention_varies(layer, x)
    with rolled_attention(layer):
        assert_fails(comparison(), "giving sample n sample n-1's routing")


@pytest.mark.parametrize("config", CONFIGS[1:4], ids=lambda c: c.name)
@pytest.mark.parametrize("family", LAYERS)
def test_gradients_match_autograd_through_per_sample_loop(family, config):
    layer = make_layer(family, config)
    x = random_input(config).requires_grad_()
    names, params = zip(*layer.named_parameters())
    grad_output = torch.randn_like(layer(x))

    def gradients(forward):
        return torch.autograd.grad((forward(x) * grad_output).sum(), (x, *params), allow_unused=True)

    actual = gradients(layer)
    expected = gradients(lambda inp: naive_forward(layer, inp))
    for name, a, e in zip(("input", *names), actual, expected):
        assert (a is None) == (e is None), name
        if a is not None:
            result = compare(a, e, TOLERANCES["layer"], name=f"grad {name}")
            assert result.passed, str(result)


def test_layers_reject_bad_geometry():
    with pytest.raises(ValueError, match="divisible by groups"):
        DynamicConv2d(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="num_kernels"):
        DynamicConv2d(4, 4, 3, num_kernels=0)
    with pytest.raises(ValueError, match="'same' is not supported for strided"):
        DynamicConv2d(4, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="'valid' or 'same'"):
        DynamicConv2d(4, 4, 3, padding="full")


@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (4, 2), ((2, 5), 1)])
def test_same_and_valid_padding_match_conv2d(kernel_size, dilation):
    """``padding='same'`` pads as ``F.conv2d`` does, the odd pixel at the bottom/right (even kernels)."""
    torch.manual_seed(0)
    x = random_images((3, 4, 9, 10))
    for padding in ("same", "valid"):
        layer = DynamicConv2d(4, 6, kernel_size, padding=padding, dilation=dilation).eval()
        with torch.no_grad():
            a = layer.routing(x).attention
            expected = torch.cat([torch.nn.functional.conv2d(
                x[i:i + 1], torch.einsum("k,kmcij->mcij", a[i], layer.weight), a[i] @ layer.bias,
                padding=padding, dilation=dilation) for i in range(3)])
            assert compare(layer(x), expected, TOLERANCES["fp32"]).passed, padding
    with pytest.raises(ValueError, match="divisible by groups"):
        DynamicConv2d(4, 6, 3, groups=4)  # out_channels not divisible
    with pytest.raises(ValueError, match="expected an int or a pair"):
        DynamicConv2d(4, 4, (1, 2, 3))
    with pytest.raises(ValueError, match="padding must be"):
        DynamicConv2d(4, 4, 3, padding=(1, 2, 3))


@pytest.mark.parametrize("padding", [(0, 1), (1, 0, 2, 1)])
def test_asymmetric_geometry_matches_conv2d(padding):
    """A 2x3 kernel, stride (2, 1), dilation (1, 2) and pads (ph, pw) or (top, left, bottom, right): every axis
    its own value, so an axis swapped anywhere (kernel, stride, pads, output size) shows."""
    torch.manual_seed(0)
    x = random_images((3, 4, 9, 11))
    layer = DynamicConv2d(4, 6, (2, 3), stride=(2, 1), padding=padding, dilation=(1, 2)).eval()
    top, left, bottom, right = padding * 2 if len(padding) == 2 else padding
    with torch.no_grad():
        a = layer.routing(x).attention
        expected = torch.cat([torch.nn.functional.conv2d(
            torch.nn.functional.pad(x[i:i + 1], (left, right, top, bottom)),
            torch.einsum("k,kmcij->mcij", a[i], layer.weight), a[i] @ layer.bias, stride=(2, 1), dilation=(1, 2))
            for i in range(3)])
        assert compare(layer(x), expected, TOLERANCES["fp32"]).passed


def test_experts_are_initialised_as_conv2d():
    """Kaiming-uniform kernels and biases within 1/sqrt(fan_in), fan_in = C/G * kH * kW, as nn.Conv2d."""
    torch.manual_seed(0)
    layer = DynamicConv2d(16, 32, 3, groups=2, num_kernels=4)
    bound = 1 / (8 * 9) ** 0.5
    assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0.8 * bound
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.8 * bound


def test_annealed_temperature_falls_linearly_from_30_to_1_over_10_epochs():
    from dyconv_deploy.nn.temperature import annealed_temperature

    assert [annealed_temperature(e) for e in (-1, 0, 2.5, 5, 9, 10, 20)] == pytest.approx(
        [30.0, 30.0, 22.75, 15.5, 3.9, 1.0, 1.0])
    assert annealed_temperature(-1, epochs=0) == annealed_temperature(3, epochs=0) == 1.0  # no annealing

"""Layer configurations and stand-in builders shared by the convert tests.

``LAYER_CASES`` covers kernel 1/3/5, stride 1/2, groups 1/depthwise, bias on/off, K 1/4 and
batch 1/3 with few rows (each value appears with several of the others, not the full product).
``FAMILIES`` maps an adapter family to a builder ``case -> module`` (None where the public
implementation cannot express the case, e.g. OSVAI has no bias), with softmax temperatures at their
deployed values; :func:`calibrated` gives a model BatchNorm statistics as the samples' have, and
:func:`images` the inputs. With 16 channels every routing MLP has at least 4 hidden units, so that
no attention is the same for every sample because its only hidden unit is dead.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from standins import (dynet, external_attention, islanna_dyrelu, kaijieshi7, osvai_odconv, seed_dynamic_conv,
                      seed_odconv, timm_condconv)
from torch import nn

from dyconv_deploy.inputs import random_images
from dyconv_deploy.samples import calibrate_batch_norms

CHANNELS = 16
SIZE = 9
SHAPE = (3, CHANNELS, SIZE, SIZE)  # the comparisons' input: three samples, so that attention can be mixed up
# Families whose kernel attention is a softmax: over one expert it is 1, and the layer a static conv.
SOFTMAX_FAMILIES = ("kaijieshi7_dynamic_conv", "external_attention", "per_sample_dynamic_conv")


@dataclass(frozen=True)
class Case:
    """One layer geometry; ``batch`` is the batch the converter probes the layer with."""

    kernel: int
    stride: int
    depthwise: bool
    bias: bool
    k: int
    batch: int

    @property
    def groups(self) -> int:
        return CHANNELS if self.depthwise else 1

    @property
    def out_channels(self) -> int:
        return CHANNELS if self.depthwise else 12

    def static_by_construction(self, label: str) -> bool:
        """Family ``label`` on this case has no input-dependent routing (softmax over K=1)."""
        return self.k == 1 and label in SOFTMAX_FAMILIES

    def __str__(self) -> str:
        return (f"k{self.kernel}s{self.stride}{'dw' if self.depthwise else 'g1'}{'b' if self.bias else 'nb'}"
                f"K{self.k}n{self.batch}")


LAYER_CASES = [
    Case(1, 1, False, True, 4, 3),
    Case(3, 1, False, False, 4, 1),
    Case(3, 2, True, True, 4, 3),
    Case(5, 2, False, True, 1, 3),
    Case(5, 1, True, False, 4, 1),
    Case(1, 2, False, False, 1, 1),
    Case(3, 1, True, True, 1, 3),
]


class RoutedBlock(nn.Module):
    """A parent computing timm-style sigmoid routing and passing it to one timm ``CondConv2d``."""

    def __init__(self, conv: nn.Module, in_channels: int):
        super().__init__()
        self.routing_fn = nn.Linear(in_channels, conv.num_experts)
        self.conv = conv

    def forward(self, x):
        return self.conv(x, torch.sigmoid(self.routing_fn(F.adaptive_avg_pool2d(x, 1).flatten(1))))


def _timm(c: Case, padding="") -> nn.Module:
    conv = timm_condconv.CondConv2d(CHANNELS, c.out_channels, c.kernel, c.stride, padding, groups=c.groups,
                                    bias=c.bias, num_experts=c.k)
    return RoutedBlock(conv, CHANNELS)


def _osvai(c: Case):  # OSVAI's ODConv has no bias
    return osvai_odconv.ODConv2d(CHANNELS, c.out_channels, c.kernel, c.stride, c.kernel // 2, groups=c.groups,
                                 kernel_num=c.k)


def _kaijieshi7(c: Case):
    return kaijieshi7.Dynamic_conv2d(CHANNELS, c.out_channels, c.kernel, stride=c.stride, padding=c.kernel // 2,
                                     groups=c.groups, bias=c.bias, K=c.k, temperature=4)


def _ea_dynamic(c: Case):
    return external_attention.DynamicConv(CHANNELS, c.out_channels, c.kernel, c.stride, c.kernel // 2,
                                          grounps=c.groups, bias=c.bias, K=c.k, temprature=1)


def _ea_cond(c: Case):
    return external_attention.CondConv(CHANNELS, c.out_channels, c.kernel, c.stride, c.kernel // 2, grounps=c.groups,
                                       bias=c.bias, K=c.k)


def _seed_dynamic(c: Case):
    return _deployed_seed(seed_dynamic_conv.DynamicConv2D(CHANNELS, c.out_channels, c.kernel, c.stride,
                                                          c.kernel // 2, groups=c.groups, bias=c.bias,
                                                          num_experts=c.k))


def _deployed_seed(layer: nn.Module) -> nn.Module:
    """The blog-post layer hard-codes the training-time tau = 30; deployed, it is 1 (as the samples')."""
    layer._attention_fn.tau = 1.0
    return layer


def _seed_odconv(c: Case):
    return None if c.depthwise else seed_odconv.ODConv2D(CHANNELS, c.out_channels, c.kernel, c.stride, c.kernel // 2,
                                                         bias=c.bias, num_experts=c.k)


def _dynet(c: Case):
    return dynet.DyNetConv(CHANNELS, c.out_channels, c.kernel, c.stride, c.kernel // 2, groups=c.groups,
                           bias=c.bias, group_size=c.k)


FAMILIES = {
    "timm_condconv": _timm,
    "osvai_odconv": _osvai,
    "kaijieshi7_dynamic_conv": _kaijieshi7,
    "external_attention": _ea_dynamic,
    "external_attention(CondConv)": _ea_cond,
    "per_sample_dynamic_conv": _seed_dynamic,
    "per_sample_odconv": _seed_odconv,
    "dynet": _dynet,
}


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (eval mode).

    For tests of BatchNorm handling only: the output of a model normalised so hardly depends on its input.
    Comparisons use :func:`calibrated` models."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def calibrated(model: nn.Module, input_shape=SHAPE) -> nn.Module:
    """``model`` in eval mode with its BatchNorms calibrated on ``random_images`` of ``[N, C, H, W] = input_shape``
    as the samples' are."""
    return calibrate_batch_norms(model, input_shape)


def images(batch: int = SHAPE[0], channels: int = CHANNELS, size: int = SIZE) -> torch.Tensor:
    """``[batch, channels, size, size]`` :func:`~dyconv_deploy.inputs.random_images` (global RNG)."""
    return random_images((batch, channels, size, size))


def mixed_model(seed: int = 2) -> nn.Module:
    """One layer of every family (a timm block: 3 CondConvs sharing a routing; both DyReLUs), 16 channels,
    each followed by a BatchNorm (calibrated; without them the signal fades layer by layer and the attention of
    the later layers is the same for every sample). Initialised from ``seed``, whatever the global RNG: the
    default is one where every layer's attention varies by 0.06 or more (the tests assert > 0.01)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return calibrated(_mixed_layers())


def _mixed_layers() -> nn.Sequential:
    layers = [
        timm_condconv.CondConvResidual(CHANNELS, CHANNELS, 5, stride=2, pad_type="same", exp_ratio=1.5,
                                       num_experts=4),
        osvai_odconv.ODConv2d(CHANNELS, CHANNELS, 3, padding=1),
        _deployed_seed(seed_dynamic_conv.DynamicConv2D(CHANNELS, CHANNELS, 3, padding=1)),
        kaijieshi7.Dynamic_conv2d(CHANNELS, CHANNELS, 3, padding=1, temperature=4),
        external_attention.DynamicConv(CHANNELS, CHANNELS, 1, 1, temprature=1),
        external_attention.CondConv(CHANNELS, CHANNELS, 3, 1, 1),
        islanna_dyrelu.DyReLUB(CHANNELS),  # its output is not contiguous: the batch-folding layers would fail on it
        seed_odconv.ODConv2D(CHANNELS, CHANNELS, 3, padding=1),
        dynet.DyNetConv(CHANNELS, CHANNELS, 3, padding=1),
        islanna_dyrelu.DyReLUA(CHANNELS),
    ]
    return nn.Sequential(*[m for layer in layers for m in (layer, nn.BatchNorm2d(CHANNELS))][:-1])

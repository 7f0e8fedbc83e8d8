"""Building blocks shared by the sample networks, parameterised by a conv factory.

A *conv factory* is any callable with ``nn.Conv2d``'s keyword interface,
``conv(in_channels, out_channels, kernel_size, stride=, padding=, groups=, bias=)``:
``nn.Conv2d`` itself builds the static twin, ``functools.partial(DynamicConv2d,
num_kernels=4)`` (or CondConv2d, ODConv2d, ...) the dynamic network, so each
architecture is written once.
"""

from typing import Callable, Optional

from torch import Tensor, nn

ConvFactory = Callable[..., nn.Module]
Activation = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(conv: ConvFactory, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
            groups: int = 1, activation: Optional[Activation] = None) -> nn.Sequential:
    """``conv (same padding, no bias) -> BatchNorm -> activation``: ``[N, C, H, W] -> [N, M, H/s, W/s]``."""
    layers = [conv(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                   groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel gate ``x * sigmoid(W2 act(W1 GAP(x)))`` with 1x1 convs (static in every sample)."""

    def __init__(self, channels: int, reduced: int, activation: Activation):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = activation()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.conv_expand(self.act(self.conv_reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * scale.sigmoid()


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet block: 1x1 expand, kxk depthwise, [squeeze-excite], 1x1 project.

    The expansion is skipped when ``expand_ratio == 1``; the residual is added when the
    stride is 1 and the channel count is kept. ``se_ratio`` is relative to ``in_channels``.
    """

    def __init__(self, conv: ConvFactory, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, activation: Activation, se_ratio: float = 0.0):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers = [] if expand_ratio == 1 else [conv_bn(conv, in_channels, hidden, 1, activation=activation)]
        layers.append(conv_bn(conv, hidden, hidden, kernel_size, stride, groups=hidden, activation=activation))
        if se_ratio:
            layers.append(SqueezeExcite(hidden, max(1, round(in_channels * se_ratio)), activation))
        layers.append(conv_bn(conv, hidden, out_channels, 1))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y

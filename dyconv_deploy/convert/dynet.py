"""DyNet-style coefficient prediction (Zhang et al. 2020, https://arxiv.org/abs/2004.10694).

The layer holds ``M * g`` fixed kernels as one static conv ``fixed_kernels`` (output channel
``m * g + i`` is fixed kernel i of dynamic kernel m) and predicts coefficients
``sigmoid(coefficient_fc(GAP(x)))`` ``[N, M * g]``; output m is ``sum_i eta[m, i] * (w[m, i] * x)``
(training form, K x the conv cost) or, equivalently, a conv with the mixed kernel. The
canonical layer is the contract with per-output-channel attention ``A [N, g, M]``, which every
lowering strategy can then run at the cost of one conv.
"""

import torch
from torch import Tensor, nn

from dyconv_deploy.convert.registry import Adapter, register
from dyconv_deploy.convert.routed import RoutedConv2d
from dyconv_deploy.nn import Routing


class CoefficientRouting(nn.Module):
    """``sigmoid(coefficient_fc(GAP(x)))`` ``[N, M * g]`` -> attention ``[N, g, M]``."""

    def __init__(self, coefficient_fc: nn.Module, out_channels: int, group_size: int):
        super().__init__()
        self.coefficient_fc = coefficient_fc
        self.out_channels = out_channels
        self.group_size = group_size

    def forward(self, x: Tensor) -> Routing:
        eta = torch.sigmoid(self.coefficient_fc(x.mean(dim=(2, 3))))
        return Routing(eta.reshape(-1, self.out_channels, self.group_size).transpose(1, 2))


@register
class DyNetAdapter(Adapter):
    family = "dynet"

    def matches(self, module: nn.Module, parent: nn.Module) -> bool:
        return (isinstance(getattr(module, "fixed_kernels", None), nn.Conv2d)
                and isinstance(getattr(module, "coefficient_fc", None), nn.Linear)
                and hasattr(module, "group_size") and hasattr(module, "out_channels"))

    def to_canonical(self, module: nn.Module, parent: nn.Module) -> RoutedConv2d:
        conv, m, g = module.fixed_kernels, module.out_channels, module.group_size
        weight = conv.weight.reshape(m, g, *conv.weight.shape[1:]).transpose(0, 1)
        bias = None if conv.bias is None else conv.bias.reshape(m, g).T
        return RoutedConv2d(CoefficientRouting(module.coefficient_fc, m, g), weight, bias, stride=conv.stride,
                            padding=conv.padding, dilation=conv.dilation, groups=conv.groups, family="dynet")

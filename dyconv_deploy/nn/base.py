"""``DynamicConvBase``: what every dynamic-conv layer shares.

A layer owns expert kernels ``weight [K, M, C/G, kH, kW]`` and optional biases
``bias [K, M]`` laid out as the ``dyconv::DynamicConv2d`` contract, and a routing branch
``routing(x) -> Routing``. ``forward`` is always::

    y = filter * dynamic_conv2d(x * channel, attention, weight, bias, spatial)

so exporters see one contract node per layer, with ODConv's channel/filter attentions as
plain multiplications around it.
"""

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from dyconv_deploy.ops import dynamic_conv2d
from dyconv_deploy.ops.contract import normalize_padding, pair


class Routing(NamedTuple):
    """Outputs of a routing branch for a batch of N samples.

    attention: ``[N, K]`` or ``[N, K, M]``. spatial: ``[N, kH, kW]`` or None.
    channel: ``[N, C]`` input-channel scale or None. filter: ``[N, M]`` output scale or None.
    """

    attention: Tensor
    spatial: Optional[Tensor] = None
    channel: Optional[Tensor] = None
    filter: Optional[Tensor] = None


class DynamicConvBase(nn.Module):
    """Expert kernels plus conv geometry; subclasses implement :meth:`routing`.

    Args:
        padding: int, ``(ph, pw)``, ``(top, left, bottom, right)``, ``'valid'`` or ``'same'`` (stride 1, as
            ``nn.Conv2d``).
        num_kernels: K, the number of expert kernels.
    """

    family = "dynamic"
    # Where the layer's code comes from: this package, or the converter adapter that built it.
    source = "dyconv_deploy"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, num_kernels: int = 4):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        if num_kernels < 1:
            raise ValueError(f"num_kernels must be >= 1, got {num_kernels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size)
        self.stride = pair(stride)
        if padding == "same" and self.stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions (as in nn.Conv2d)")
        self.padding = normalize_padding(padding, self.kernel_size, dilation)
        self.dilation = pair(dilation)
        self.groups = groups
        self.num_kernels = num_kernels
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(num_kernels, out_channels)) if bias else None
        self.reset_expert_parameters()

    def reset_expert_parameters(self) -> None:
        """Initialise each expert as ``nn.Conv2d`` would (Kaiming-uniform, a=sqrt(5))."""
        for expert in self.weight.data:
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel() // self.out_channels
            bound = 1 / math.sqrt(fan_in) if fan_in else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def routing(self, x: Tensor) -> Routing:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, C, H, W] -> [N, M, Ho, Wo]``."""
        return self.routed_conv(x, self.routing(x))

    def routed_conv(self, x: Tensor, r: Routing, padding=None) -> Tensor:
        """The convolution under routing ``r``; ``padding`` (top, left, bottom, right) overrides ``self.padding``."""
        if r.channel is not None:
            x = x * r.channel[:, :, None, None]
        y = dynamic_conv2d(x, r.attention, self.weight, self.bias, r.spatial, self.stride,
                           self.padding if padding is None else padding, self.dilation, self.groups)
        if r.filter is not None:
            y = y * r.filter[:, :, None, None]
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, num_kernels={self.num_kernels}")


def global_pool(x: Tensor) -> Tensor:
    """``[N, C, H, W] -> [N, C]`` spatial mean (the squeeze of every routing branch)."""
    return x.mean(dim=(2, 3))

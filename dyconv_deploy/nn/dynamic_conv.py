"""DynamicConv2d — attention over K convolution kernels.

Paper: Chen et al., "Dynamic Convolution: Attention over Convolution Kernels", CVPR 2020
(https://arxiv.org/abs/1912.03458). Public code: kaijieshi7/Dynamic-convolution-Pytorch.

Routing: ``GAP -> FC(C -> C/reduction) -> ReLU -> FC(-> K) -> softmax(z / temperature)``,
attention ``[N, K]`` summing to 1; the temperature is annealed from 30 to 1 during the
first epochs (:mod:`dyconv_deploy.nn.temperature`).
Shapes: ``x [N, C, H, W] -> y [N, M, Ho, Wo]``; weight ``[K, M, C/G, kH, kW]``; bias ``[K, M]``.
"""

import torch
from torch import Tensor, nn

from dyconv_deploy.nn.base import DynamicConvBase, Routing, global_pool


class DynamicConv2d(DynamicConvBase):
    """Dynamic convolution with softmax attention over ``num_kernels`` experts."""

    family = "dynamic_conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, num_kernels: int = 4, reduction: int = 4,
                 temperature: float = 30.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         num_kernels)
        hidden = max(in_channels // reduction, 1)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_kernels)
        self.temperature = float(temperature)

    def set_temperature(self, temperature: float) -> None:
        """Set the softmax temperature (30 early in training, 1 at the end and in deployment)."""
        self.temperature = float(temperature)

    def attention(self, x: Tensor) -> Tensor:
        """Normalised attention ``[N, K]`` (each row sums to 1)."""
        logits = self.fc2(self.relu(self.fc1(global_pool(x))))
        return torch.softmax(logits / self.temperature, dim=1)

    def routing(self, x: Tensor) -> Routing:
        return Routing(self.attention(x))

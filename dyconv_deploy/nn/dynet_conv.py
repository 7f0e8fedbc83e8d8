"""DyNetConv2d — per-output-channel coefficients over K fixed kernels.

Paper: Zhang et al., "DyNet: Dynamic Convolution for Accelerating Convolutional Neural
Networks", 2020 (https://arxiv.org/abs/2004.10694).

Coefficient prediction: ``sigmoid(FC(GAP(x)))`` reshaped to ``[N, K, M]``: output channel m
of sample n uses ``sum_k A[n,k,m] W[k,m]`` (and ``sum_k A[n,k,m] B[k,m]``).
Shapes: ``x [N, C, H, W] -> y [N, M, Ho, Wo]``; weight ``[K, M, C/G, kH, kW]``; bias ``[K, M]``.
"""

import torch
from torch import Tensor, nn

from dyconv_deploy.nn.base import DynamicConvBase, Routing, global_pool


class DyNetConv2d(DynamicConvBase):
    """Dynamic convolution mixing each output channel's K kernels with its own coefficients."""

    family = "dynet"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, num_kernels: int = 4):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         num_kernels)
        self.coefficient_fc = nn.Linear(in_channels, num_kernels * out_channels)

    def attention(self, x: Tensor) -> Tensor:
        """Coefficients ``[N, K, M]`` in (0, 1)."""
        logits = self.coefficient_fc(global_pool(x))
        return torch.sigmoid(logits).reshape(x.shape[0], self.num_kernels, self.out_channels)

    def routing(self, x: Tensor) -> Routing:
        return Routing(self.attention(x))

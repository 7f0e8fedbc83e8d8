"""CondConv2d — conditionally parameterised convolution (mixture of experts).

Paper: Yang et al., "CondConv: Conditionally Parameterized Convolutions for Efficient
Inference", NeurIPS 2019 (https://arxiv.org/abs/1904.04971). Public code: timm
``layers/cond_conv2d.py`` (routing in the parent block of ``efficientnet_cc_*``).

Routing: ``sigmoid(FC(GAP(x)))`` — ``[N, K]``, each weight in (0, 1), not normalised.
Shapes: ``x [N, C, H, W] -> y [N, M, Ho, Wo]``; weight ``[K, M, C/G, kH, kW]``; bias ``[K, M]``.
"""

import torch
from torch import Tensor, nn

from dyconv_deploy.nn.base import DynamicConvBase, Routing, global_pool


class CondConv2d(DynamicConvBase):
    """Convolution whose kernel is a sigmoid-routed mixture of ``num_experts`` experts."""

    family = "condconv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, num_experts: int = 4):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         num_experts)
        self.routing_fn = nn.Linear(in_channels, num_experts)

    def attention(self, x: Tensor) -> Tensor:
        """Routing weights ``[N, K]`` in (0, 1)."""
        return torch.sigmoid(self.routing_fn(global_pool(x)))

    def routing(self, x: Tensor) -> Routing:
        return Routing(self.attention(x))

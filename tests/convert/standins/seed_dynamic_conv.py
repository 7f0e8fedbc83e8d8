"""Blog-post ``DynamicConv2D(_ConvNd)`` (shared/seeds 000, 0809zheng.github.io): one conv per sample.

``_attention`` flattens the pooled ``[1, C, 1, 1]`` sample to ``[C]`` and returns
``softmax(block(x) / tau, dim=0)`` (tau = 30 as published); the static ``_ConvNd`` bias is added.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.utils import _pair


class _attention(nn.Module):
    def __init__(self, in_channels, num_experts, r=4, t=30):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(in_channels, in_channels // r), nn.ReLU(inplace=True),
                                   nn.Linear(in_channels // r, num_experts))
        self.tau = t

    def forward(self, x):
        return torch.softmax(self.block(torch.flatten(x)) / self.tau, dim=0)


class DynamicConv2D(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", num_experts=3, dropout_rate=0.2):
        kernel_size = _pair(kernel_size)
        super().__init__(in_channels, out_channels, kernel_size, _pair(stride), _pair(padding), _pair(dilation),
                         False, _pair(0), groups, bias, padding_mode)
        self._avg_pooling = functools.partial(F.adaptive_avg_pool2d, output_size=(1, 1))
        self._attention_fn = _attention(in_channels, num_experts)
        self.weight = nn.Parameter(torch.Tensor(num_experts, out_channels, in_channels // groups, *kernel_size))
        self.reset_parameters()

    def _conv_forward(self, input, weight):
        if self.padding_mode != "zeros":
            return F.conv2d(F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), weight,
                            self.bias, self.stride, _pair(0), self.dilation, self.groups)
        return F.conv2d(input, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, inputs):
        res = []
        for input in inputs:
            input = input.unsqueeze(0)
            routing_weights = self._attention_fn(self._avg_pooling(input))
            kernels = torch.sum(routing_weights[:, None, None, None, None] * self.weight, 0)
            res.append(self._conv_forward(input, kernels))
        return torch.cat(res, dim=0)

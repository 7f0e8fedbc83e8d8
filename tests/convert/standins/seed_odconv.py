"""Blog-post ``ODConv2D(_ConvNd)`` (shared/seeds 003): one conv per sample, four attentions.

``_attention``: ``fc`` (no activation is applied, as published) then sigmoid spatial
``[k, k]``, input-channel ``[C]``, filter ``[M]`` and softmax kernel ``[K]`` heads; the kernel is
``sum_k an_k * W_k * as * ac * af`` (``ac`` broadcasts over input channels: groups = 1 only).
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.utils import _pair


class _attention(nn.Module):
    def __init__(self, in_channels, num_experts, out_channels, kernel_size, r=4):
        super().__init__()
        self.kernel_size = kernel_size
        self.fc = nn.Linear(in_channels, in_channels // r)
        self.relu = nn.ReLU(inplace=True)
        self.fc_as = nn.Linear(in_channels // r, kernel_size * kernel_size)
        self.fc_ac = nn.Linear(in_channels // r, in_channels)
        self.fc_af = nn.Linear(in_channels // r, out_channels)
        self.fc_an = nn.Linear(in_channels // r, num_experts)

    def forward(self, x):
        x = self.fc(torch.flatten(x))
        return (torch.sigmoid(self.fc_as(x)).view(self.kernel_size, self.kernel_size), torch.sigmoid(self.fc_ac(x)),
                torch.sigmoid(self.fc_af(x)), torch.softmax(self.fc_an(x), dim=0))


class ODConv2D(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", num_experts=3, dropout_rate=0.2):
        kernel_size = _pair(kernel_size)
        super().__init__(in_channels, out_channels, kernel_size, _pair(stride), _pair(padding), _pair(dilation),
                         False, _pair(0), groups, bias, padding_mode)
        self._avg_pooling = functools.partial(F.adaptive_avg_pool2d, output_size=(1, 1))
        self._attention_fn = _attention(in_channels, num_experts, out_channels, kernel_size[0])
        self.weight = nn.Parameter(torch.Tensor(num_experts, out_channels, in_channels // groups, *kernel_size))
        self.reset_parameters()

    def forward(self, inputs):
        res = []
        for input in inputs:
            input = input.unsqueeze(0)
            _as, _ac, _af, _an = self._attention_fn(self._avg_pooling(input))
            kernels = torch.sum(_as[None, None, None] * _ac[None, None, :, None, None] * _af[None, :, None, None, None]
                                * _an[:, None, None, None, None] * self.weight, 0)
            res.append(F.conv2d(input, kernels, self.bias, self.stride, self.padding, self.dilation, self.groups))
        return torch.cat(res, dim=0)

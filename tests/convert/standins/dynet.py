"""A DyNet-style layer (Zhang et al. 2020) as blog posts write it: fixed kernels plus coefficient prediction.

``fixed_kernels``: one static conv with ``out_channels * group_size`` filters (filter
``m * group_size + i`` is fixed kernel i of output m). ``coefficient_fc``: ``GAP -> Linear ->
sigmoid`` gives ``eta [N, out_channels * group_size]``; output m is
``sum_i eta[m, i] * (fixed kernel (m, i) conv x)`` (the paper's training form).
"""

import torch
from torch import nn


class DyNetConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True, group_size=4):
        super().__init__()
        self.out_channels = out_channels
        self.group_size = group_size
        self.fixed_kernels = nn.Conv2d(in_channels, out_channels * group_size, kernel_size, stride, padding,
                                       groups=groups, bias=bias)
        self.coefficient_fc = nn.Linear(in_channels, out_channels * group_size)

    def forward(self, x):
        n = x.shape[0]
        eta = torch.sigmoid(self.coefficient_fc(x.mean(dim=(2, 3)))).view(n, self.out_channels, self.group_size)
        y = self.fixed_kernels(x)
        y = y.view(n, self.out_channels, self.group_size, *y.shape[2:])
        return (y * eta[:, :, :, None, None]).sum(dim=2)

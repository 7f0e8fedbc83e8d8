"""xmu-xiaoma666/External-Attention-pytorch ``model/conv/DynamicConv.py`` and ``CondConv.py``.

Both files define an ``Attention`` (softmax with ``temprature`` in DynamicConv, sigmoid in
CondConv; the names are kept here as ``Attention`` inside :class:`DynamicConv` and
``CondAttention`` for CondConv since one module hosts both) and spell groups ``grounps``.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _init_convs(module):
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class Attention(nn.Module):
    def __init__(self, in_planes, ratio, K, temprature=30, init_weight=True):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.temprature = temprature
        assert in_planes > ratio
        hidden_planes = in_planes // ratio
        self.net = nn.Sequential(nn.Conv2d(in_planes, hidden_planes, kernel_size=1, bias=False), nn.ReLU(),
                                 nn.Conv2d(hidden_planes, K, kernel_size=1, bias=False))
        if init_weight:
            _init_convs(self)

    def forward(self, x):
        att = self.net(self.avgpool(x)).view(x.shape[0], -1)
        return F.softmax(att / self.temprature, -1)


class CondAttention(nn.Module):
    def __init__(self, in_planes, K, init_weight=True):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.net = nn.Conv2d(in_planes, K, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()
        if init_weight:
            _init_convs(self)

    def forward(self, x):
        return self.sigmoid(self.net(self.avgpool(x)).view(x.shape[0], -1))


class _FoldedConv(nn.Module):
    """The shared forward of both files: ``attention @ experts``, batch folded into groups."""

    def _setup(self, in_planes, out_planes, kernel_size, stride, padding, dilation, grounps, bias, K, init_weight):
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = grounps
        self.K = K
        self.init_weight = init_weight
        self.weight = nn.Parameter(torch.randn(K, out_planes, in_planes // grounps, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.randn(K, out_planes)) if bias else None
        if init_weight:
            for i in range(K):
                nn.init.kaiming_uniform_(self.weight[i])

    def forward(self, x):
        bs, _, h, w = x.shape
        att = self.attention(x)
        x = x.view(1, -1, h, w)
        aggregate_weight = torch.mm(att, self.weight.view(self.K, -1)).view(
            bs * self.out_planes, self.in_planes // self.groups, self.kernel_size, self.kernel_size)
        aggregate_bias = None if self.bias is None else torch.mm(att, self.bias.view(self.K, -1)).view(-1)
        output = F.conv2d(x, aggregate_weight, aggregate_bias, stride=self.stride, padding=self.padding,
                          groups=self.groups * bs, dilation=self.dilation)
        return output.view(bs, self.out_planes, output.size(-2), output.size(-1))


class DynamicConv(_FoldedConv):
    def __init__(self, in_planes, out_planes, kernel_size, stride, padding=0, dilation=1, grounps=1, bias=True, K=4,
                 temprature=30, ratio=4, init_weight=True):
        super().__init__()
        self.attention = Attention(in_planes=in_planes, ratio=ratio, K=K, temprature=temprature,
                                   init_weight=init_weight)
        self._setup(in_planes, out_planes, kernel_size, stride, padding, dilation, grounps, bias, K, init_weight)


class CondConv(_FoldedConv):
    def __init__(self, in_planes, out_planes, kernel_size, stride, padding=0, dilation=1, grounps=1, bias=True, K=4,
                 init_weight=True):
        super().__init__()
        self.attention = CondAttention(in_planes=in_planes, K=K, init_weight=init_weight)
        self._setup(in_planes, out_planes, kernel_size, stride, padding, dilation, grounps, bias, K, init_weight)

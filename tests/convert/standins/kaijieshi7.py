"""kaijieshi7/Dynamic-convolution-Pytorch ``dynamic_conv.py``: ``attention2d`` and ``Dynamic_conv2d``.

Attention: ``AdaptiveAvgPool2d -> fc1 (1x1 conv, no bias, hidden int(C*ratio)+1, or K when C == 3)
-> relu -> fc2 (1x1 conv with bias) -> softmax(z / temperature)``; the temperature must be
``3n+1`` (34 by default). The batch is folded into conv groups.
"""

import torch
import torch.nn.functional as F
from torch import nn


class attention2d(nn.Module):
    def __init__(self, in_planes, ratios, K, temperature, init_weight=True):
        super().__init__()
        assert temperature % 3 == 1
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden_planes = int(in_planes * ratios) + 1 if in_planes != 3 else K
        self.fc1 = nn.Conv2d(in_planes, hidden_planes, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden_planes, K, 1, bias=True)
        self.temperature = temperature
        if init_weight:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)

    def updata_temperature(self):
        if self.temperature != 1:
            self.temperature -= 3

    def forward(self, x):
        x = F.relu(self.fc1(self.avgpool(x)))
        x = self.fc2(x).view(x.size(0), -1)
        return F.softmax(x / self.temperature, 1)


class Dynamic_conv2d(nn.Module):
    def __init__(self, in_planes, out_planes, kernel_size, ratio=0.25, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, K=4, temperature=34, init_weight=True):
        super().__init__()
        assert in_planes % groups == 0
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.bias = bias
        self.K = K
        self.attention = attention2d(in_planes, ratio, K, temperature)
        self.weight = nn.Parameter(torch.randn(K, out_planes, in_planes // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(K, out_planes)) if bias else None
        if init_weight:
            for i in range(self.K):
                nn.init.kaiming_uniform_(self.weight[i])

    def update_temperature(self):
        self.attention.updata_temperature()

    def forward(self, x):
        softmax_attention = self.attention(x)
        batch_size, _, height, width = x.size()
        x = x.view(1, -1, height, width)
        weight = self.weight.view(self.K, -1)
        aggregate_weight = torch.mm(softmax_attention, weight).view(
            batch_size * self.out_planes, self.in_planes // self.groups, self.kernel_size, self.kernel_size)
        aggregate_bias = None if self.bias is None else torch.mm(softmax_attention, self.bias).view(-1)
        output = F.conv2d(x, aggregate_weight, aggregate_bias, self.stride, self.padding, self.dilation,
                          self.groups * batch_size)
        return output.view(batch_size, self.out_planes, output.size(-2), output.size(-1))

"""ODConv2d — omni-dimensional dynamic convolution.

Paper: Li, Zhou, Yao, "Omni-Dimensional Dynamic Convolution", ICLR 2022
(https://openreview.net/forum?id=DmpCfq6Mg39). Public code: OSVAI/ODConv.

One squeeze branch ``GAP -> 1x1 conv (C -> A) -> BN -> ReLU`` feeds four heads:
spatial ``sigmoid -> [N, kH, kW]`` (absent for 1x1 kernels), input channel
``sigmoid -> [N, C]``, filter ``sigmoid -> [N, M]`` (absent for depthwise), kernel
``softmax -> [N, K]`` (absent for K = 1); each logit is divided by the temperature.
``A = max(int(C * reduction), min_channel)``.
Shapes: ``x [N, C, H, W] -> y [N, M, Ho, Wo]``; weight ``[K, M, C/G, kH, kW]``; bias ``[K, M]``.
"""

import torch
from torch import Tensor, nn

from dyconv_deploy.nn.base import DynamicConvBase, Routing


class ODConv2d(DynamicConvBase):
    """Dynamic convolution with attention over kernel, spatial, input- and output-channel dims."""

    family = "odconv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, num_kernels: int = 4, reduction: float = 0.0625,
                 min_channel: int = 16, temperature: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         num_kernels)
        hidden = max(int(in_channels * reduction), min_channel)
        kh, kw = self.kernel_size
        self.temperature = float(temperature)
        self.fc = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(hidden, in_channels, 1)
        depthwise = in_channels == groups and in_channels == out_channels
        self.filter_fc = None if depthwise else nn.Conv2d(hidden, out_channels, 1)
        self.spatial_fc = None if kh * kw == 1 else nn.Conv2d(hidden, kh * kw, 1)
        self.kernel_fc = None if num_kernels == 1 else nn.Conv2d(hidden, num_kernels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for expert in self.weight.data:
            nn.init.kaiming_normal_(expert, mode="fan_out", nonlinearity="relu")
        for head in (self.fc, self.channel_fc, self.filter_fc, self.spatial_fc, self.kernel_fc):
            if head is not None:
                nn.init.kaiming_normal_(head.weight, mode="fan_out", nonlinearity="relu")
                if head.bias is not None:
                    nn.init.zeros_(head.bias)

    def set_temperature(self, temperature: float) -> None:
        self.temperature = float(temperature)

    def routing(self, x: Tensor) -> Routing:
        n = x.shape[0]
        h = self.relu(self.bn(self.fc(x.mean(dim=(2, 3), keepdim=True))))
        t = self.temperature
        channel = torch.sigmoid(self.channel_fc(h).reshape(n, -1) / t)
        filt = None if self.filter_fc is None else torch.sigmoid(self.filter_fc(h).reshape(n, -1) / t)
        spatial = (None if self.spatial_fc is None
                   else torch.sigmoid(self.spatial_fc(h).reshape(n, *self.kernel_size) / t))
        kernel = (h.new_ones(n, 1) if self.kernel_fc is None
                  else torch.softmax(self.kernel_fc(h).reshape(n, -1) / t, dim=1))
        return Routing(kernel, spatial, channel, filt)

    def attention(self, x: Tensor) -> Tensor:
        """Kernel attention ``[N, K]`` (softmax)."""
        return self.routing(x).attention

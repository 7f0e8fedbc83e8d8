"""timm ``CondConv2d`` (timm/layers/cond_conv2d.py), its padding helpers (timm/layers/padding.py),
``CondConvResidual`` (timm/models/_efficientnet_blocks.py) and a tiny ``efficientnet_cc``-like net.

``CondConv2d.weight`` is ``[num_experts, M * C/G * kH * kW]``; ``forward(x, routing_weights)``
mixes experts with a matmul and folds the batch into conv groups; padding ``'same'`` with
stride > 1 is computed per call (TensorFlow 'SAME'). The block computes
``routing_weights = sigmoid(routing_fn(GAP(x)))`` once and passes it to its three convs.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def get_same_padding(size: int, kernel_size: int, stride: int, dilation: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)


def get_padding_value(padding, kernel_size: int, stride: int = 1, dilation: int = 1):
    """(padding, is_dynamic) for timm's padding spec ('' symmetric, 'same', 'valid' or an int)."""
    if not isinstance(padding, str):
        return padding, False
    padding = padding.lower()
    if padding == "same":
        if stride == 1 and (dilation * (kernel_size - 1)) % 2 == 0:
            return get_padding(kernel_size, stride, dilation), False
        return 0, True
    if padding == "valid":
        return 0, False
    return get_padding(kernel_size, stride, dilation), False


def conv2d_same(x, weight, bias, stride, padding, dilation, groups):
    kh, kw = weight.shape[-2:]
    pad_h = get_same_padding(x.shape[-2], kh, stride[0], dilation[0])
    pad_w = get_same_padding(x.shape[-1], kw, stride[1], dilation[1])
    x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return F.conv2d(x, weight, bias, stride, (0, 0), dilation, groups)


class CondConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding="", dilation=1, groups=1,
                 bias=False, num_experts=4):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.stride = (stride, stride)
        padding_val, is_dynamic = get_padding_value(padding, kernel_size, stride=stride, dilation=dilation)
        self.dynamic_padding = is_dynamic
        self.padding = (padding_val, padding_val)
        self.dilation = (dilation, dilation)
        self.groups = groups
        self.num_experts = num_experts
        self.weight_shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = nn.Parameter(torch.empty(num_experts, math.prod(self.weight_shape)))
        if bias:
            self.bias_shape = (out_channels,)
            self.bias = nn.Parameter(torch.empty(num_experts, out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        for expert in self.weight.data:
            nn.init.kaiming_uniform_(expert.view(self.weight_shape), a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(math.prod(self.weight_shape[1:]))
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x, routing_weights):
        b, c, h, w = x.shape
        weight = torch.matmul(routing_weights, self.weight)
        weight = weight.view((b * self.out_channels, self.in_channels // self.groups) + self.kernel_size)
        bias = None
        if self.bias is not None:
            bias = torch.matmul(routing_weights, self.bias).view(b * self.out_channels)
        x = x.reshape(1, b * c, h, w)
        conv = conv2d_same if self.dynamic_padding else F.conv2d
        out = conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups * b)
        return out.permute([1, 0, 2, 3]).view(b, self.out_channels, out.shape[-2], out.shape[-1])


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm + activation (parameter names of nn.BatchNorm2d)."""

    def __init__(self, num_features, apply_act=True, act_layer=nn.SiLU):
        super().__init__(num_features)
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x):
        return self.act(super().forward(x))


class SqueezeExcite(nn.Module):
    def __init__(self, in_chs, rd_channels):
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        x_se = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(x_se)


class CondConvResidual(nn.Module):
    """InvertedResidual with CondConv pw/dw/pwl convs sharing one routing (depthwise when group_size=1)."""

    def __init__(self, in_chs, out_chs, dw_kernel_size=3, stride=1, group_size=1, pad_type="", exp_ratio=1.0,
                 se_ratio=0.25, num_experts=0):
        super().__init__()
        mid_chs = int(in_chs * exp_ratio)
        groups = mid_chs // group_size if group_size else 1
        self.num_experts = num_experts
        self.has_skip = in_chs == out_chs and stride == 1
        self.conv_pw = CondConv2d(in_chs, mid_chs, 1, padding=pad_type, num_experts=num_experts)
        self.bn1 = BatchNormAct2d(mid_chs)
        self.conv_dw = CondConv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride, groups=groups,
                                  padding=pad_type, num_experts=num_experts)
        self.bn2 = BatchNormAct2d(mid_chs)
        self.se = SqueezeExcite(mid_chs, max(1, int(in_chs * se_ratio))) if se_ratio else nn.Identity()
        self.conv_pwl = CondConv2d(mid_chs, out_chs, 1, padding=pad_type, num_experts=num_experts)
        self.bn3 = BatchNormAct2d(out_chs, apply_act=False)
        self.drop_path = nn.Identity()
        self.routing_fn = nn.Linear(in_chs, num_experts)

    def forward(self, x):
        shortcut = x
        pooled_inputs = F.adaptive_avg_pool2d(x, 1).flatten(1)
        routing_weights = torch.sigmoid(self.routing_fn(pooled_inputs))
        x = self.bn1(self.conv_pw(x, routing_weights))
        x = self.bn2(self.conv_dw(x, routing_weights))
        x = self.se(x)
        x = self.bn3(self.conv_pwl(x, routing_weights))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class TinyCondConvNet(nn.Module):
    """``efficientnet_cc``-like: stem, CondConvResidual stages (one 'same'-padded, stride 2), head."""

    def __init__(self, num_experts=4, num_classes=5):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(8)
        self.blocks = nn.Sequential(
            nn.Sequential(CondConvResidual(8, 8, 3, exp_ratio=2.0, num_experts=num_experts)),
            nn.Sequential(CondConvResidual(8, 12, 5, stride=2, pad_type="same", exp_ratio=2.0,
                                           num_experts=num_experts),
                          CondConvResidual(12, 12, 3, exp_ratio=2.0, num_experts=num_experts)),
        )
        self.conv_head = nn.Conv2d(12, 16, 1, bias=False)
        self.bn2 = BatchNormAct2d(16)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        return self.classifier(x.mean((2, 3)))

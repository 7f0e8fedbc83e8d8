"""Islanna/DynamicReLU ``dyrelu.py``: ``DyReLU`` base, ``DyReLUA`` (shared) and ``DyReLUB`` (channel-wise).

``theta = 2 sigmoid(fc2(relu(fc1(GAP(x))))) - 1``; coefficients
``theta.view(-1, [C,] 2k) * lambdas + init_v`` with ``lambdas = [1]*k + [0.5]*k`` and
``init_v = [1, 0, ...]`` (buffers); output ``max_j (a_j x + b_j)``.
"""

import torch
from torch import nn


class DyReLU(nn.Module):
    def __init__(self, channels, reduction=4, k=2, conv_type="2d"):
        super().__init__()
        self.channels = channels
        self.k = k
        self.conv_type = conv_type
        assert self.conv_type in ["1d", "2d"]
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(channels // reduction, 2 * k)
        self.sigmoid = nn.Sigmoid()
        self.register_buffer("lambdas", torch.Tensor([1.0] * k + [0.5] * k).float())
        self.register_buffer("init_v", torch.Tensor([1.0] + [0.0] * (2 * k - 1)).float())

    def get_theta(self, x):
        theta = torch.mean(x, axis=-1)
        if self.conv_type == "2d":
            theta = torch.mean(theta, axis=-1)
        theta = self.fc2(self.relu(self.fc1(theta)))
        return 2 * self.sigmoid(theta) - 1

    def forward(self, x):
        raise NotImplementedError


class DyReLUA(DyReLU):
    def __init__(self, channels, reduction=4, k=2, conv_type="2d"):
        super().__init__(channels, reduction, k, conv_type)
        self.fc2 = nn.Linear(channels // reduction, 2 * k)

    def forward(self, x):
        assert x.shape[1] == self.channels
        relu_coefs = self.get_theta(x).view(-1, 2 * self.k) * self.lambdas + self.init_v
        x_perm = x.transpose(0, -1).unsqueeze(-1)
        output = x_perm * relu_coefs[:, :self.k] + relu_coefs[:, self.k:]
        return torch.max(output, dim=-1)[0].transpose(0, -1)


class DyReLUB(DyReLU):
    def __init__(self, channels, reduction=4, k=2, conv_type="2d"):
        super().__init__(channels, reduction, k, conv_type)
        self.fc2 = nn.Linear(channels // reduction, 2 * k * channels)

    def forward(self, x):
        assert x.shape[1] == self.channels
        relu_coefs = self.get_theta(x).view(-1, self.channels, 2 * self.k) * self.lambdas + self.init_v
        if self.conv_type == "1d":
            x_perm = x.permute(2, 0, 1).unsqueeze(-1)
            output = x_perm * relu_coefs[:, :, :self.k] + relu_coefs[:, :, self.k:]
            return torch.max(output, dim=-1)[0].permute(1, 2, 0)
        x_perm = x.permute(2, 3, 0, 1).unsqueeze(-1)
        output = x_perm * relu_coefs[:, :, :self.k] + relu_coefs[:, :, self.k:]
        return torch.max(output, dim=-1)[0].permute(2, 3, 0, 1)

"""DyReLU — dynamic ReLU, ``y_c = max_k (a_c^k(x) x_c + b_c^k(x))``.

Paper: Chen et al., "Dynamic ReLU", ECCV 2020 (https://arxiv.org/abs/2003.10027).

Hyper function: ``GAP -> FC(C -> C/reduction) -> ReLU -> FC -> 2 sigmoid(z) - 1`` gives
residuals; ``a^k = alpha^k + lambda_a * da^k``, ``b^k = beta^k + lambda_b * db^k`` with
``lambda_a = 1.0``, ``lambda_b = 0.5``, ``alpha^1 = 1`` and all other initial values 0.
Modes: ``A`` (spatial- and channel-shared, 2K outputs), ``B`` (channel-wise, 2KC),
``C`` (channel-wise times a spatial attention
``pi = min(gamma * softmax(conv1x1(x) / tau), 1)`` over H*W, ``gamma = HW / 3``, ``tau = 10``).
Shapes: ``x [N, C, H, W] -> y [N, C, H, W]``.
"""

import torch
from torch import Tensor, nn

from dyconv_deploy.nn.base import global_pool


class DyReLU(nn.Module):
    """Dynamic ReLU of mode ``A``, ``B`` or ``C`` with ``k`` linear pieces."""

    def __init__(self, channels: int, mode: str = "B", reduction: int = 4, k: int = 2,
                 lambda_a: float = 1.0, lambda_b: float = 0.5, spatial_temperature: float = 10.0):
        super().__init__()
        if mode not in ("A", "B", "C"):
            raise ValueError(f"DyReLU mode must be 'A', 'B' or 'C', got {mode!r}")
        self.channels = channels
        self.mode = mode
        self.k = k
        self.lambda_a = lambda_a
        self.lambda_b = lambda_b
        self.spatial_temperature = spatial_temperature
        outputs = 2 * k if mode == "A" else 2 * k * channels
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, outputs)
        self.spatial_conv = nn.Conv2d(channels, 1, 1) if mode == "C" else None
        self.register_buffer("init_a", torch.tensor([1.0] + [0.0] * (k - 1)), persistent=False)
        self.register_buffer("init_b", torch.zeros(k), persistent=False)

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Slopes and intercepts ``a, b``: ``[N, K, C or 1, 1, 1]``."""
        n = x.shape[0]
        theta = 2 * torch.sigmoid(self.fc2(self.relu(self.fc1(global_pool(x))))) - 1
        theta = theta.reshape(n, 2, self.k, -1, 1, 1)
        a = self.init_a[:, None, None, None] + self.lambda_a * theta[:, 0]
        b = self.init_b[:, None, None, None] + self.lambda_b * theta[:, 1]
        return a, b

    def spatial_attention(self, x: Tensor) -> Tensor:
        """Mode C: ``[N, 1, 1, H, W]`` attention, ``min(HW/3 * softmax(z / tau), 1)``."""
        n, _, h, w = x.shape
        z = self.spatial_conv(x).reshape(n, h * w) / self.spatial_temperature
        pi = torch.clamp(torch.softmax(z, dim=1) * (h * w / 3), max=1.0)
        return pi.reshape(n, 1, 1, h, w)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.coefficients(x)
        if self.mode == "C":
            pi = self.spatial_attention(x)
            a, b = a * pi, b * pi
        return (a * x[:, None] + b).amax(dim=1)

    def extra_repr(self) -> str:
        return f"{self.channels}, mode={self.mode!r}, k={self.k}"

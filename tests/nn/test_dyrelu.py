"""DyReLU A/B/C against the paper's formulas written out element by element.

``y[n,c,h,w] = max_k (a[n,k,c] x[n,c,h,w] + b[n,k,c])`` with ``a^k = alpha^k + lambda_a da^k``,
``b^k = beta^k + lambda_b db^k``, residuals ``2 sigmoid(FC(ReLU(FC(GAP x)))) - 1`` (first the
K slopes, then the K intercepts, each over C channels or shared), ``alpha^1 = 1``, other
initial values 0; mode C scales both by ``pi[n,h,w] = min(HW/3 softmax_hw(conv1x1(x)/tau), 1)``.
The inputs are ``random_images``; the coefficients vary across the batch and giving sample n sample
n-1's coefficients fails the comparison (:mod:`guards`).
"""

import pytest
import torch
import torch.nn.functional as F
from guards import assert_attention_varies, assert_fails, rolled_attention

from dyconv_deploy.inputs import random_images

from dyconv_deploy.nn import DyReLU
from dyconv_deploy.tolerance import TOLERANCES, compare


def dyrelu_formula(layer: DyReLU, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    k = layer.k
    pooled = x.mean(dim=(2, 3))
    residual = 2 * torch.sigmoid(F.linear(F.relu(F.linear(pooled, layer.fc1.weight, layer.fc1.bias)),
                                          layer.fc2.weight, layer.fc2.bias)) - 1
    per_channel = 1 if layer.mode == "A" else c
    delta_a = residual[:, :k * per_channel].reshape(n, k, per_channel)
    delta_b = residual[:, k * per_channel:].reshape(n, k, per_channel)
    pi = torch.ones(n, h, w)
    if layer.mode == "C":
        logits = F.conv2d(x, layer.spatial_conv.weight, layer.spatial_conv.bias).reshape(n, h * w)
        pi = torch.clamp(torch.softmax(logits / layer.spatial_temperature, dim=1) * h * w / 3, max=1.0)
        pi = pi.reshape(n, h, w)
    y = torch.empty_like(x)
    for i in range(n):
        for ch in range(c):
            j = 0 if layer.mode == "A" else ch
            pieces = [((1.0 if piece == 0 else 0.0) + layer.lambda_a * delta_a[i, piece, j]) * pi[i] * x[i, ch]
                      + (0.0 + layer.lambda_b * delta_b[i, piece, j]) * pi[i]
                      for piece in range(k)]
            y[i, ch] = torch.stack(pieces).amax(dim=0)
    return y


@pytest.mark.parametrize("mode,k", [("A", 2), ("B", 2), ("C", 2), ("B", 3)])
def test_dyrelu_matches_formula(mode, k):
    layer = DyReLU(6, mode=mode, k=k, reduction=1).eval()  # reduction 4 leaves 1 hidden unit, dead for all samples
    x = random_images((2, 6, 5, 4))

    def comparison():
        with torch.no_grad():
            return compare(layer(x), dyrelu_formula(layer, x), TOLERANCES["layer"])

    result = comparison()
    assert result.passed, str(result)
    assert_attention_varies(layer, x)
    with rolled_attention(layer):
        assert_fails(comparison(), "giving sample n sample n-1's coefficients")


def test_dyrelu_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        DyReLU(4, mode="D")

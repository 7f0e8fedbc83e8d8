"""Each native layer's routing is its paper's formula over its own submodules (recomputed here, not reused).

The layer-vs-loop tests take the routing from the layer itself, so a routing defect (a temperature ignored, an
activation dropped, coefficients read in the wrong order) passes them; these pin the formulas. Temperatures
are != 1 and the hidden pre-activations take both signs, so each term matters.
"""

import pytest
import torch
import torch.nn.functional as F

from dyconv_deploy.inputs import random_images
from dyconv_deploy.nn import CondConv2d, DynamicConv2d, DyNetConv2d, ODConv2d

X = random_images((3, 8, 9, 9), torch.Generator().manual_seed(0))
POOLED = X.mean(dim=(2, 3))


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_dynamic_conv_softmax_with_temperature_over_a_relu_mlp():
    layer = DynamicConv2d(8, 6, 3, num_kernels=4, reduction=2, temperature=3.0).eval()
    hidden = layer.fc1(POOLED)
    assert (hidden < 0).any() and (hidden > 0).any()
    with torch.no_grad():
        expected = torch.softmax(layer.fc2(torch.relu(hidden)) / 3.0, dim=1)
        routing = layer.routing(X)
    _close(routing.attention, expected)
    assert routing.spatial is None and routing.channel is None and routing.filter is None


def test_condconv_sigmoid_of_a_linear_routing():
    layer = CondConv2d(8, 6, 3, num_experts=4).eval()
    with torch.no_grad():
        _close(layer.routing(X).attention, torch.sigmoid(layer.routing_fn(POOLED)))


def test_dynet_coefficient_k_m_scales_expert_k_output_channel_m():
    layer = DyNetConv2d(8, 6, 3, num_kernels=4).eval()
    with torch.no_grad():
        coefficients = torch.sigmoid(layer.coefficient_fc(POOLED))  # index k * M + m
        attention = layer.routing(X).attention
    assert attention.shape == (3, 4, 6)
    for k in range(4):
        for m in range(6):
            _close(attention[:, k, m], coefficients[:, k * 6 + m])


@pytest.mark.parametrize("groups, out_channels", [(1, 6), (8, 8), (8, 16)])
def test_odconv_four_attentions_with_temperature(groups, out_channels):
    layer = ODConv2d(8, out_channels, 3, groups=groups, num_kernels=4, temperature=2.0).eval()
    with torch.no_grad():
        layer.bn.running_mean.uniform_(-0.2, 0.2)
        layer.bn.running_var.uniform_(0.5, 2.0)
        h = F.relu(layer.bn(layer.fc(POOLED[:, :, None, None])))
        routing = layer.routing(X)
        _close(routing.channel, torch.sigmoid(layer.channel_fc(h).flatten(1) / 2.0))
        _close(routing.spatial, torch.sigmoid(layer.spatial_fc(h).reshape(3, 3, 3) / 2.0))
        _close(routing.attention, torch.softmax(layer.kernel_fc(h).flatten(1) / 2.0, dim=1))
        if groups == out_channels == 8:  # a true depthwise conv has no filter attention (the paper's ODConv-dw)
            assert layer.filter_fc is None and routing.filter is None
        else:  # a channel multiplier (16 outputs from 8 groups) keeps it
            _close(routing.filter, torch.sigmoid(layer.filter_fc(h).flatten(1) / 2.0))

"""Dynamic convs no adapter knows, written here in styles of their own, are recognised from their torch.fx trace.

Each layer folds the batch into conv groups but stores and mixes its experts its own way. The converted model
must match the original, export with a dynamic batch and verify on ONNX Runtime at batch 3; the checks can fail
(the original depends on its input, the attention varies over the batch, and rolling it along the batch fails).
Loops over the batch (the attention computed for the batch, or for each sample inside the loop), ODConv's four
attentions, DyNet's per-channel ones, blocks that go on after the conv (BatchNorm, activation, residual, in place
too) and layers written experts-first (static expert convs whose outputs an attention mixes) are read too; layers
the trace cannot read (an attention carried from sample to sample, control flow on values) stay unknown with the
reason, and ordinary blocks that look like experts-first layers stay as they are.
"""

import logging
import operator

import pytest
import torch
import torch.nn.functional as F
from cases import FAMILIES, LAYER_CASES, calibrated, images
from cases import SHAPE as CASE_SHAPE
from guards import assert_attention_varies, assert_depends_on_input, assert_fails, rolled_attention
from torch import nn

from dyconv_deploy.analysis import analyze
from dyconv_deploy.convert import RoutedConv2d, convert_model
from dyconv_deploy.convert.detect import find_dynamic_convs, scan_convolutions
from dyconv_deploy.convert.traced import NotRecognised, recognise_traced
from dyconv_deploy.export import contract_nodes, export_onnx
from dyconv_deploy.inputs import random_images
from dyconv_deploy.lower import lower
from dyconv_deploy.tolerance import TOLERANCES
from dyconv_deploy.verify import verify_onnx

SHAPE = (3, 8, 12, 12)


class FlatExperts(nn.Module):
    """Experts flattened ``[K, M*C/G*k*k]``, a 1x1-conv softmax attention with a temperature, mixed bias ``a @ b``."""

    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, experts=4, temperature=4.0):
        super().__init__()
        self.cin, self.cout, self.k, self.stride, self.padding, self.groups = cin, cout, k, stride, padding, groups
        self.route = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, 6, 1), nn.ReLU(), nn.Conv2d(6, experts, 1))
        self.temperature = temperature
        self.experts = nn.Parameter(torch.randn(experts, cout * cin // groups * k * k) * 0.3)
        self.expert_bias = nn.Parameter(torch.randn(experts, cout) * 0.5)

    def forward(self, x):
        n, c, h, w = x.shape
        a = F.softmax(self.route(x).flatten(1) / self.temperature, dim=1)
        weight = (a @ self.experts).view(n * self.cout, self.cin // self.groups, self.k, self.k)
        y = F.conv2d(x.view(1, n * c, h, w), weight, (a @ self.expert_bias).view(-1), self.stride, self.padding,
                     1, self.groups * n)
        return y.view(n, self.cout, y.size(2), y.size(3))


class ChannelMajorExperts(nn.Module):
    """Experts stored ``[M, K, C, kH, kW]`` (K not the first axis), einsum mixing, a 3x5 dilated kernel, no bias."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.cout = cout
        self.fc = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(cout, experts, cin, 3, 5) * 0.3)

    def forward(self, x):
        b = x.size(0)
        a = torch.softmax(self.fc(x.mean(dim=(2, 3))), dim=-1)
        kernels = torch.einsum("bk,mkcij->bmcij", a, self.weight).reshape(-1, *self.weight.shape[2:])
        y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), kernels, None, 1, (2, 4), 2, b)
        return y.reshape(b, self.cout, *y.shape[-2:])


class StackedSigmoidExperts(nn.Module):
    """CondConv-style: a ``ParameterList`` of kernels, sigmoid routing, a broadcast multiply-sum, a static bias
    repeated over the batch, ``padding='same'``."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.cout = cout
        self.kernels = nn.ParameterList([nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3) for _ in range(experts)])
        self.routing = nn.Linear(cin, experts)
        self.bias = nn.Parameter(torch.randn(cout) * 0.5)

    def forward(self, x):
        n, c, h, w = x.shape
        a = torch.sigmoid(self.routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        experts = torch.stack(list(self.kernels))
        kernels = (a.view(n, -1, 1, 1, 1, 1) * experts.unsqueeze(0)).sum(1)
        y = F.conv2d(x.reshape(1, n * c, h, w), kernels.reshape(n * self.cout, c, 3, 3), self.bias.repeat(n),
                     padding="same", groups=n)
        return y.view(n, self.cout, *y.shape[-2:])


class DynamicConv(nn.Module):
    """A class of its own that shares External-Attention's name and attributes (``attention``, ``K``, a 5-D
    ``weight``) but whose attention takes the pooled vector: the name-matched adapter cannot convert it."""

    def __init__(self, cin, cout, K=4):
        super().__init__()
        self.K, self.cout = K, cout
        self.attention = nn.Sequential(nn.Linear(cin, K), nn.Softmax(-1))
        self.weight = nn.Parameter(torch.randn(K, cout, cin, 3, 3) * 0.3)
        self.bias = None

    def forward(self, x):
        n, c, h, w = x.shape
        a = self.attention(x.mean((2, 3)))
        kernels = torch.einsum("nk,kmcij->nmcij", a, self.weight).flatten(0, 1)
        y = F.conv2d(x.reshape(1, n * c, h, w), kernels, None, 1, 1, 1, n)
        return y.view(n, self.cout, h, w)


class OmniAttentions(nn.Module):
    """ODConv written from the paper: four attentions from one pooled branch with BatchNorm, the channel one
    multiplying the input, the spatial one the mixed kernels, the filter one the output."""

    def __init__(self, cin, cout, k, stride=1, experts=4):
        super().__init__()
        self.cout, self.k, self.stride = cout, k, stride
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, 16, 1, bias=False), nn.BatchNorm2d(16),
                                     nn.ReLU())
        self.to_channel, self.to_filter = nn.Conv2d(16, cin, 1), nn.Conv2d(16, cout, 1)
        self.to_spatial, self.to_kernel = nn.Conv2d(16, k * k, 1), nn.Conv2d(16, experts, 1)
        self.kernels = nn.Parameter(torch.randn(experts, cout, cin, k, k) * 0.3)

    def forward(self, x):
        n, c, h, w = x.shape
        z = self.squeeze(x)
        channel, filters = torch.sigmoid(self.to_channel(z)), torch.sigmoid(self.to_filter(z))
        spatial = torch.sigmoid(self.to_spatial(z)).view(n, 1, 1, self.k, self.k)
        kernel = F.softmax(self.to_kernel(z).flatten(1), dim=1)
        weight = torch.einsum("nk,kocij->nocij", kernel, self.kernels) * spatial
        y = F.conv2d((x * channel).reshape(1, n * c, h, w), weight.reshape(n * self.cout, c, self.k, self.k), None,
                     self.stride, self.k // 2, 1, n)
        return y.view(n, self.cout, *y.shape[-2:]) * filters


class PerChannelFolded(nn.Module):
    """DyNet-style coefficients per output channel, computed ``[N, M, K]`` (channel-major), with a mixed bias."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.cout, self.experts = cout, experts
        self.coefficients = nn.Linear(cin, cout * experts)
        self.bases = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)
        self.base_bias = nn.Parameter(torch.randn(experts, cout) * 0.5)

    def forward(self, x):
        n, c, h, w = x.shape
        eta = torch.sigmoid(self.coefficients(x.mean((2, 3)))).view(n, self.cout, self.experts)
        weight = (eta.permute(0, 2, 1)[..., None, None, None] * self.bases).sum(1)
        bias = (eta * self.base_bias.t()).sum(-1)
        y = F.conv2d(x.reshape(1, n * c, h, w), weight.reshape(n * self.cout, c, 3, 3), bias.reshape(-1), 1, 1, 1, n)
        return y.view(n, self.cout, h, w)


class PerSampleLoop(nn.Module):
    """One conv per sample in a Python loop over a batched softmax attention, einsum mixing, a static bias."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.fc = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(cout) * 0.5)

    def forward(self, x):
        a = torch.softmax(self.fc(x.mean((2, 3))), 1)
        return torch.cat([F.conv2d(x[i:i + 1], torch.einsum("k,kmcij->mcij", a[i], self.weight), self.bias, padding=1)
                          for i in range(x.shape[0])])


class ParameterListLoop(nn.Module):
    """CondConv written with a loop over the batch and one over a ``ParameterList`` of experts (each weighted by
    a scalar of the attention), a 3x5 dilated kernel and two groups."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.kernels = nn.ParameterList([nn.Parameter(torch.randn(cout, cin // 2, 3, 5) * 0.3)
                                         for _ in range(experts)])
        self.route = nn.Linear(cin, experts)

    def forward(self, x):
        r = torch.sigmoid(self.route(x.mean(dim=(2, 3))))
        outputs = []
        for i in range(x.size(0)):
            weight = sum(r[i, k] * self.kernels[k] for k in range(len(self.kernels)))
            outputs.append(F.conv2d(x[i:i + 1], weight, None, 1, (2, 4), 2, 2))
        return torch.cat(outputs, 0)


class PerChannelLoop(nn.Module):
    """DyNet-style ``[N, K, M]`` coefficients, kernels mixed for the batch, then one conv per sample, stride 2."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.experts, self.cout = experts, cout
        self.bases = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)
        self.coefficients = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, experts * cout),
                                          nn.Sigmoid())

    def forward(self, x):
        eta = self.coefficients(x).view(-1, self.experts, self.cout)
        weight = (eta[..., None, None, None] * self.bases[None]).sum(1)
        return torch.cat([F.conv2d(x[i:i + 1], weight[i], None, 2, 1) for i in range(len(x))])


class BatchSizedViewLoop(nn.Module):
    """A loop over the batch whose attention is reshaped with the batch size it loops over, ``view(n, K)``."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.experts = experts
        self.fc = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)

    def forward(self, x):
        n = x.shape[0]
        a = torch.softmax(self.fc(x.mean((2, 3))).view(n, self.experts) / 2.0, 1)
        return torch.cat([F.conv2d(x[i:i + 1], torch.einsum("k,kmcij->mcij", a[i], self.weight), None, 1, 1)
                          for i in range(n)])


class StackedListUnbatchedLoop(nn.Module):
    """Experts and biases in ``ParameterList``s: kernels ``torch.stack``-ed, mixed by matmul and reshaped with
    ``view(n, *W.shape[1:])`` (a 5-D shape the trace must guess), biases mixed by a Python sum; one conv per
    unbatched sample ``x[i] [C, H, W]``, stacked."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.experts = nn.ParameterList([nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3) for _ in range(experts)])
        self.biases = nn.ParameterList([nn.Parameter(torch.randn(cout) * 0.5) for _ in range(experts)])
        self.gate = nn.Linear(cin, experts)

    def forward(self, x):
        n = x.size(0)
        a = torch.softmax(self.gate(x.mean((2, 3))), -1)
        stacked = torch.stack(list(self.experts))
        kernels = (a @ stacked.view(len(self.experts), -1)).view(n, *stacked.shape[1:])
        biases = sum(a[:, k, None] * self.biases[k] for k in range(len(self.biases)))
        return torch.stack([F.conv2d(x[i], kernels[i], biases[i], 1, 1) for i in range(n)])


class GroupedOmniInKernel(nn.Module):
    """ODConv with two groups and all four attentions multiplied into the kernel (the channel one by group)."""

    def __init__(self, cin, cout, experts=4, groups=2):
        super().__init__()
        self.cout, self.groups = cout, groups
        self.hidden = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 16), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(16, n) for n in (experts, 9, cin, cout)])
        self.kernels = nn.Parameter(torch.randn(experts, cout, cin // groups, 3, 3) * 0.3)

    def forward(self, x):
        n, c, h, w = x.shape
        z = self.hidden(x)
        kernel, spatial, channel, filters = (head(z) for head in self.heads)
        weight = torch.einsum("nk,kmcij->nmcij", torch.softmax(kernel, 1), self.kernels)
        weight = weight * torch.sigmoid(spatial).view(n, 1, 1, 3, 3) * torch.sigmoid(filters).view(n, -1, 1, 1, 1)
        grouped = weight.view(n, self.groups, self.cout // self.groups, c // self.groups, 3, 3)
        weight = grouped * torch.sigmoid(channel).view(n, self.groups, 1, c // self.groups, 1, 1)
        y = F.conv2d(x.reshape(1, n * c, h, w), weight.reshape(-1, c // self.groups, 3, 3), None, 1, "same", 1,
                     n * self.groups)
        return y.view(n, self.cout, h, w)


class DynamicConvBNReLU(nn.Module):
    """A block that goes on after its dynamic conv: BatchNorm, ReLU, and a residual sum with its input."""

    def __init__(self, channels, experts=4):
        super().__init__()
        self.conv = DynamicConv(channels, channels, experts)
        self.bn = nn.BatchNorm2d(channels)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5), self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        n, c, h, w = x.shape
        a = self.conv.attention(x.mean((2, 3)))
        kernels = torch.einsum("nk,kmcij->nmcij", a, self.conv.weight).flatten(0, 1)
        y = F.conv2d(x.reshape(1, n * c, h, w), kernels, None, 1, 1, 1, n).view(n, -1, h, w)
        return F.relu(self.bn(y)) + x


class InPlaceBlock(DynamicConv):
    """A block that goes on in place after its conv: ``nn.ReLU(inplace=True)`` and ``y.add_(x)`` (the conv's result
    is read as it was before they changed it)."""

    def __init__(self, channels, experts=4):
        super().__init__(channels, channels, experts)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        n, c, h, w = x.shape
        a = self.attention(x.mean((2, 3)))
        kernels = torch.einsum("nk,kmcij->nmcij", a, self.weight).flatten(0, 1)
        y = self.act(F.conv2d(x.reshape(1, n * c, h, w), kernels, None, 1, 1, 1, n).view(n, self.cout, h, w))
        y.add_(x)
        return y


class OmniBlock(OmniAttentions):
    """ODConv followed by an activation inside the layer's own forward."""

    def forward(self, x):
        return F.hardswish(super().forward(x))


class GateInTheLoop(nn.Module):
    """The attention computed inside the loop over the batch, on the unbatched sample ``x[i] [C, H, W]`` (a
    ``Linear`` gate, softmax over dim 0): no tensor of the trace holds the batch's attention, and the branch run on
    the batch as written would take the softmax across the samples (it must run under vmap)."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.fc = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)

    def forward(self, x):
        outputs = []
        for i in range(x.shape[0]):
            a = torch.softmax(self.fc(x[i].mean((-2, -1))), 0)
            outputs.append(F.conv2d(x[i:i + 1], torch.einsum("k,kmcij->mcij", a, self.weight), padding=1))
        return torch.cat(outputs)


class NormalisedConvGateUnbatched(nn.Module):
    """A gate on the unbatched sample of a pooled 1x1 conv, a LayerNorm and a Linear, softmax over dim 0: run
    under vmap, with both in plain ops that ``torch.export`` batches (their own vmap rules pin the batch)."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, 12, 1), nn.Flatten(0), nn.LayerNorm(12),
                                  nn.ReLU(), nn.Linear(12, experts))
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)

    def forward(self, x):
        return torch.stack([F.conv2d(xi, torch.einsum("k,kmcij->mcij", torch.softmax(self.gate(xi), 0), self.weight),
                                     None, 1, 1) for xi in x])


class PooledGate(nn.Module):
    """A gate written for a batch, ``[N, C, H, W] -> [N, K]``: pooling, two 1x1 convs, ``view(x.size(0), -1)``."""

    def __init__(self, cin, experts, temperature=3.0):
        super().__init__()
        self.pool, self.reduce, self.expand = nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, 6, 1), nn.Conv2d(6, experts, 1)
        self.temperature = temperature

    def forward(self, x):
        logits = self.expand(F.relu(self.reduce(self.pool(x))))
        return torch.softmax(logits.view(x.size(0), -1) / self.temperature, 1)


class IteratedSamplesBatchGate(nn.Module):
    """``for xi in x``, each sample given its batch axis back (``xi.unsqueeze(0)``) for a gate written for batches;
    kernels mixed by a Python sum over the experts' parameter (``enumerate(self.weight)``: K = 4 of them, not the
    traced batch of 3), an expert bias ``a @ b``, stride 2."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.gate = PooledGate(cin, experts)
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(experts, cout) * 0.5)

    def forward(self, x):
        outputs = []
        for xi in x:
            xi = xi.unsqueeze(0)
            a = self.gate(xi)  # [1, K]
            kernel = sum(a[0, k] * expert for k, expert in enumerate(self.weight))
            outputs.append(F.conv2d(xi, kernel, (a @ self.bias).view(-1), 2, 1))
        return torch.cat(outputs, 0)


class OmniPerSampleSplit(nn.Module):
    """ODConv in a loop over ``x.split(1)``: the four attentions of each sample from an attention module returning
    a tuple, the channel one scaling the sample, the filter one its output; outputs stacked and squeezed."""

    def __init__(self, cin, cout, k=3, experts=3):
        super().__init__()
        self.k = k
        self.attention = OmniHeads(cin, cout, k, experts)
        self.kernels = nn.Parameter(torch.randn(experts, cout, cin, k, k) * 0.3)

    def forward(self, x):
        outputs = []
        for xi in x.split(1):
            channel, filters, spatial, kernel = self.attention(xi)
            weight = (kernel.view(-1, 1, 1, 1, 1) * self.kernels).sum(0) * spatial.view(1, 1, self.k, self.k)
            y = F.conv2d(xi * channel.view(1, -1, 1, 1), weight, None, 1, self.k // 2)
            outputs.append(y * filters.view(1, -1, 1, 1))
        return torch.stack(outputs).squeeze(1)


class OmniHeads(nn.Module):
    """ODConv's attentions of a batch ``[N, C, H, W]``: channel ``[N, C]``, filter ``[N, M]``, spatial ``[N, k*k]``
    and kernel ``[N, K]``, from one pooled hidden vector."""

    def __init__(self, cin, cout, k, experts):
        super().__init__()
        self.hidden = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 12), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(12, n) for n in (cin, cout, k * k, experts)])

    def forward(self, x):
        z = self.hidden(x)
        channel, filters, spatial, kernel = (head(z) for head in self.heads)
        return torch.sigmoid(channel), torch.sigmoid(filters), torch.sigmoid(spatial), torch.softmax(kernel, -1)


class FoldedKernelsFromASampleLoop(nn.Module):
    """Each sample's kernel mixed inside a loop (its gate on ``x[i:i+1]``; K = 4 parameters summed over
    ``zip(r, self.kernels)``, so the sample's ``[K]`` gate is iterated: 4 items, not the traced batch of 3), the
    kernels joined and run as one conv with the batch folded into its groups."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.cout = cout
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, experts), nn.Sigmoid())
        self.kernels = nn.ParameterList([nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3) for _ in range(experts)])

    def forward(self, x):
        n, c, h, w = x.shape
        kernels = []
        for i in range(n):
            r = self.gate(x[i:i + 1])[0]
            kernels.append(sum(rk * kernel for rk, kernel in zip(r, self.kernels)))
        y = F.conv2d(x.view(1, n * c, h, w), torch.cat(kernels), None, 1, 1, 1, n)
        return y.view(n, self.cout, h, w)


class PerChannelUnbatchedLoop(nn.Module):
    """DyNet coefficients ``[K, M]`` of each unbatched sample (``torch.unbind``), computed inside the loop."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.experts, self.cout = experts, cout
        self.coefficients = nn.Linear(cin, experts * cout)
        self.bases = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)

    def forward(self, x):
        outputs = []
        for sample in torch.unbind(x):
            eta = torch.sigmoid(self.coefficients(sample.mean((-2, -1)))).view(self.experts, self.cout)
            outputs.append(F.conv2d(sample, (eta[..., None, None, None] * self.bases).sum(0), None, 1, 1))
        return torch.stack(outputs)


class FunctionalGateMixedBias(nn.Module):
    """A gate of ``F.linear`` on parameters of its own, on ``x[i:i+1]``, normalised by its sum (``g / g.sum()``:
    one attention, not a product of two), and an expert bias ``[K, M]`` mixed by the same attention (the gate's
    parameters go into the batched branch, the bias stays where a reading sees it)."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.route_weight = nn.Parameter(torch.randn(experts, cin) * 0.5)
        self.route_bias = nn.Parameter(torch.zeros(experts))
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(experts, cout) * 0.5)

    def forward(self, x):
        outputs = []
        for i in range(x.size(0)):
            xi = x[i:i + 1]
            g = torch.sigmoid(F.linear(xi.mean((2, 3)), self.route_weight, self.route_bias))
            r = (g / g.sum(-1, keepdim=True))[0]
            kernel = (r.view(-1, 1, 1, 1, 1) * self.weight).sum(0)
            outputs.append(F.conv2d(xi, kernel, (r[:, None] * self.bias).sum(0), 1, 1))
        return torch.cat(outputs)


class KernelsStackedThenConvolved(nn.Module):
    """Two loops: every sample's kernel mixed in the first (its softmax attention on the unbatched sample) and
    ``torch.stack``-ed, the convs run in the second on ``kernels[i]``."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.fc = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)

    def forward(self, x):
        kernels = torch.stack([(torch.softmax(self.fc(xi.mean((1, 2))), -1).view(-1, 1, 1, 1, 1) * self.weight).sum(0)
                               for xi in x])
        return torch.cat([F.conv2d(x[i:i + 1], kernels[i], padding=1) for i in range(x.shape[0])])


class ConvGateSampleView(nn.Module):
    """DyNet with a 1x1-conv gate on ``x[i][None]`` whose coefficients are viewed as one sample's ``[M, K]``:
    run on the batch as written, the branch fails at that view, after the coefficients it is read from."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.cout, self.experts = cout, experts
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout * experts, 1))
        self.bases = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)

    def forward(self, x):
        outputs = []
        for i in range(x.shape[0]):
            xi = x[i][None]
            coefficients = torch.tanh(self.gate(xi)).view(self.cout, self.experts)
            weight = torch.einsum("mk,kmcij->mcij", coefficients, self.bases)
            outputs.append(F.conv2d(xi, weight, None, 1, 1))
        return torch.cat(outputs)


class ExpertsBesideAShortcut(nn.Module):
    """Experts first beside a static shortcut conv of the experts' own geometry (RepVGG-like: one of the K + 1
    convs is no expert), the gate sparsified in place (``masked_fill_``, ``div_``: the router must keep them)."""

    def __init__(self, channels, experts=4):
        super().__init__()
        self.shortcut = nn.Conv2d(channels, channels, 3, padding=1)
        self.experts = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in range(experts)])
        self.fc = nn.Linear(channels, experts)

    def forward(self, x):
        a = torch.softmax(self.fc(x.mean((2, 3))), 1)
        a.masked_fill_(a < 1 / a.shape[1], 0.0)  # below the mean: some of every sample's gates
        a.div_(a.sum(1, keepdim=True))
        return self.shortcut(x) + sum(a[:, k, None, None, None] * conv(x) for k, conv in enumerate(self.experts))


class ExpertsWithARouterConv(nn.Module):
    """Experts first on ``x.contiguous()``, routed through a conv of the experts' own geometry on the input (the
    attention comes after it: it is no expert)."""

    def __init__(self, channels, experts=3):
        super().__init__()
        self.look = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.experts = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1, bias=False)
                                      for _ in range(experts)])
        self.fc = nn.Linear(channels, experts)

    def forward(self, x):
        x = x.contiguous()
        a = torch.sigmoid(self.fc(F.relu(self.look(x)).mean((2, 3))))
        return torch.einsum("nk,nkmhw->nmhw", a, torch.stack([conv(x) for conv in self.experts], 1))


class ExpertsWithBiasParameters(nn.Module):
    """Experts first with bias-free convs and a ``ParameterList`` of biases added to each expert's output before the
    mix (``a_k * (conv_k(x) + b_k)``: the mixed bias ``sum_k a_k b_k``)."""

    def __init__(self, channels, experts=3):
        super().__init__()
        self.experts = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1, bias=False)
                                      for _ in range(experts)])
        self.biases = nn.ParameterList([nn.Parameter(torch.randn(channels) * 0.5) for _ in range(experts)])
        self.fc = nn.Linear(channels, experts)

    def forward(self, x):
        a = torch.softmax(self.fc(x.mean((2, 3))), 1)
        return sum(a[:, k, None, None, None] * (conv(x) + self.biases[k].view(1, -1, 1, 1))
                   for k, conv in enumerate(self.experts))


class ExpertConvsMixed(nn.Module):
    """Experts-first CondConv: K ``nn.Conv2d`` (with biases) on the input, their outputs weighted by a sigmoid
    routing and summed; no conv has an input-dependent weight."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.route = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, experts), nn.Sigmoid())
        self.experts = nn.ModuleList([nn.Conv2d(cin, cout, 3, 2, 1) for _ in range(experts)])

    def forward(self, x):
        r = self.route(x)
        return sum(r[:, k, None, None, None] * conv(x) for k, conv in enumerate(self.experts))


class WideConvPerChannel(nn.Module):
    """Experts-first DyNet: one conv of K * M filters (expert-major), its output ``[N, K, M, H, W]`` mixed by
    per-channel coefficients ``[N, K, M]``."""

    def __init__(self, cin, cout, experts=3):
        super().__init__()
        self.experts, self.cout = experts, cout
        self.bank = nn.Conv2d(cin, experts * cout, 3, padding=1, bias=False)
        self.coefficients = nn.Linear(cin, experts * cout)

    def forward(self, x):
        n, _, h, w = x.shape
        eta = torch.sigmoid(self.coefficients(x.mean((2, 3)))).view(n, self.experts, self.cout)
        return (self.bank(x).view(n, self.experts, self.cout, h, w) * eta[..., None, None]).sum(1)


class StackedExpertOutputsBlock(nn.Module):
    """Experts-first DynamicConv in a block: 1x1 expert convs' outputs stacked on dim 1, mixed by a softmax
    attention with ``einsum``, then BatchNorm and ReLU."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.gate = nn.Linear(cin, experts)
        self.experts = nn.ModuleList([nn.Conv2d(cin, cout, 1, bias=False) for _ in range(experts)])
        self.bn = nn.BatchNorm2d(cout)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5), self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        a = torch.softmax(self.gate(x.mean((2, 3))) / 2.0, -1)
        y = torch.einsum("nk,nkmhw->nmhw", a, torch.stack([conv(x) for conv in self.experts], 1))
        return F.relu(self.bn(y))


class WideConvChannelMajor(nn.Module):
    """Experts-first, one conv of M * K filters channel-major (``view(n, M, K, h, w)``), two groups, an
    attention ``[N, K]``."""

    def __init__(self, cin, cout, experts=2):
        super().__init__()
        self.experts, self.cout = experts, cout
        self.bank = nn.Conv2d(cin, cout * experts, 3, padding=1, groups=2)
        self.fc = nn.Linear(cin, experts)

    def forward(self, x):
        n, _, h, w = x.shape
        a = torch.softmax(self.fc(x.mean((2, 3))), 1)
        return (self.bank(x).view(n, self.cout, self.experts, h, w) * a[:, None, :, None, None]).sum(2)


LAYERS = {
    "flat-experts-stride2-groups": (lambda: FlatExperts(8, 8, 3, stride=2, padding=0, groups=2), "dynamic_conv"),
    "channel-major-einsum-dilated": (lambda: ChannelMajorExperts(8, 6), "dynamic_conv"),
    "stacked-sigmoid-same": (lambda: StackedSigmoidExperts(8, 8), "condconv"),
    "name-collision": (lambda: DynamicConv(8, 8), "dynamic_conv"),
    "odconv-four-attentions-stride2": (lambda: OmniAttentions(8, 8, 3, stride=2), "odconv"),
    "odconv-pointwise": (lambda: OmniAttentions(8, 6, 1), "odconv"),
    "per-channel-channel-major-bias": (lambda: PerChannelFolded(8, 6), "dynet"),
    "loop-einsum-static-bias": (lambda: PerSampleLoop(8, 8), "dynamic_conv"),
    "loop-parameter-list-dilated-groups": (lambda: ParameterListLoop(8, 6), "condconv"),
    "loop-per-channel-stride2": (lambda: PerChannelLoop(8, 8), "dynet"),
    "loop-batch-sized-view": (lambda: BatchSizedViewLoop(8, 8), "dynamic_conv"),
    "block-bn-relu-residual": (lambda: DynamicConvBNReLU(8), "dynamic_conv"),
    "block-in-place-relu-add": (lambda: InPlaceBlock(8), "dynamic_conv"),
    "loop-unbatched-stacked-lists-python-sum-bias": (lambda: StackedListUnbatchedLoop(8, 8), "dynamic_conv"),
    "odconv-grouped-all-in-kernel": (lambda: GroupedOmniInKernel(8, 6), "odconv"),
    "odconv-block-hardswish": (lambda: OmniBlock(8, 8, 3), "odconv"),
    "gate-in-the-loop-unbatched": (lambda: GateInTheLoop(8, 8), "dynamic_conv"),
    "gate-in-the-loop-unbatched-conv-layernorm": (lambda: NormalisedConvGateUnbatched(8, 8), "dynamic_conv"),
    "gate-in-the-loop-iterated-batch-gate-bias": (lambda: IteratedSamplesBatchGate(8, 8), "dynamic_conv"),
    "gate-in-the-loop-odconv-split": (lambda: OmniPerSampleSplit(8, 6), "odconv"),
    "gate-in-the-loop-folded-kernels": (lambda: FoldedKernelsFromASampleLoop(8, 8), "condconv"),
    "gate-in-the-loop-dynet-unbind": (lambda: PerChannelUnbatchedLoop(8, 6), "dynet"),
    "gate-in-the-loop-functional-gate-mixed-bias": (lambda: FunctionalGateMixedBias(8, 8), "dynamic_conv"),
    "gate-in-the-loop-kernels-stacked-then-convolved": (lambda: KernelsStackedThenConvolved(8, 8), "dynamic_conv"),
    "gate-in-the-loop-conv-gate-sample-view": (lambda: ConvGateSampleView(8, 6), "dynet"),
    "experts-first-conv-list-sigmoid-stride2": (lambda: ExpertConvsMixed(8, 8), "condconv"),
    "experts-first-beside-a-shortcut-in-place-gate": (lambda: ExpertsBesideAShortcut(8), "dynamic_conv"),
    "experts-first-router-conv-contiguous": (lambda: ExpertsWithARouterConv(8), "condconv"),
    "experts-first-bias-parameters-before-the-mix": (lambda: ExpertsWithBiasParameters(8), "dynamic_conv"),
    "experts-first-wide-conv-per-channel": (lambda: WideConvPerChannel(8, 6), "dynet"),
    "experts-first-stacked-einsum-block": (lambda: StackedExpertOutputsBlock(8, 8), "dynamic_conv"),
    "experts-first-wide-conv-channel-major-groups": (lambda: WideConvChannelMajor(8, 6), "dynamic_conv"),
}


def _net(layer: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), layer, nn.ReLU())
    with torch.no_grad():  # attention logits spread enough that samples get their own mixture
        for module in layer.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(4.0)
    return net.eval()


@pytest.fixture(scope="module", params=list(LAYERS))
def converted(request):
    build, family = LAYERS[request.param]
    torch.manual_seed(0)
    model = _net(build())
    converted, report = convert_model(model, random_images(SHAPE))
    return model, converted, report, family


def test_the_layer_is_converted_from_its_trace(converted):
    _, model, report, family = converted
    assert report.unknown == []
    assert [(r.path, r.family) for r in report.converted] == [("2", "traced")]
    layers = [m for m in model[2].modules() if isinstance(m, RoutedConv2d)]  # the layer, or the one in its block
    assert len(layers) == 1 and layers[0].source == "traced" and layers[0].family == family
    assert report.converted[0].num_kernels == layers[0].num_kernels > 1
    assert report.summary().startswith("converted 1 traced layer")


def test_converted_model_matches_and_the_check_can_fail(converted):
    original, model, _, _ = converted
    x = random_images(SHAPE)
    assert_depends_on_input(original, x)
    assert_attention_varies(model, x)
    with torch.no_grad():
        expected = original(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        with rolled_attention(model):
            assert not torch.allclose(model(x), expected, rtol=1e-3, atol=1e-3), "rolled attention went unnoticed"


def test_export_verifies_on_onnx_runtime_at_batch_3(converted):
    original, model, _, _ = converted
    proto = export_onnx(model, random_images((1, *SHAPE[1:])))
    assert len(contract_nodes(proto)) == 1
    for strategy in ("plugin", "experts"):
        lowered = lower(proto, strategy)
        for comparison in verify_onnx(original, lowered, SHAPE, [3], TOLERANCES["fp32"]):
            assert comparison.passed, f"{strategy}: {comparison}"
        with rolled_attention(model):
            assert_fails(verify_onnx(model, lowered, SHAPE, [3]), "giving sample n sample n-1's attention")


class AttentionCarriedAcrossSamples(nn.Module):
    """A loop whose attention for sample i depends on the samples before it (a running mean of the gate's
    logits): no per-sample function of the input to route with."""

    def __init__(self, cin, cout, experts=4):
        super().__init__()
        self.fc = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(experts, cout, cin, 3, 3) * 0.3)

    def forward(self, x):
        outputs, running = [], 0
        for i in range(x.shape[0]):
            running = running + self.fc(x[i].mean((1, 2)))
            a = torch.softmax(running / (i + 1), 0)
            outputs.append(F.conv2d(x[i:i + 1], torch.einsum("k,kmcij->mcij", a, self.weight), padding=1))
        return torch.cat(outputs)


class SpatialConvGateUnbatched(GateInTheLoop):
    """A gate with a 3x3 conv on the unbatched sample, softmax over dim 0: only ``vmap`` batches it, and
    ``torch.export`` cannot take ``vmap`` of a conv with a dynamic batch (refused, not converted into a layer that
    would not export)."""

    def __init__(self, cin, cout, experts=4):
        super().__init__(cin, cout, experts)
        self.look = nn.Conv2d(cin, cin, 3, padding=1)

    def forward(self, x):
        outputs = []
        for i in range(x.shape[0]):
            a = torch.softmax(self.fc(self.look(x[i]).mean((-2, -1))), 0)
            outputs.append(F.conv2d(x[i:i + 1], torch.einsum("k,kmcij->mcij", a, self.weight), padding=1))
        return torch.cat(outputs)


class BranchOnValues(PerSampleLoop):
    """Python control flow on the input's values: no trace."""

    def forward(self, x):
        return super().forward(x) if bool(x.mean() > -100) else x


@pytest.mark.parametrize("layer, reason", [
    (AttentionCarriedAcrossSamples, "no reading of its experts"),
    (SpatialConvGateUnbatched, "no reading of its experts"),
    (BranchOnValues, "torch.fx cannot trace its forward"),
])
def test_a_layer_the_trace_cannot_read_stays_unknown_with_the_reason(layer, reason):
    model = _net(layer(8, 8))
    _, report = convert_model(model, random_images(SHAPE))
    assert report.converted == []
    assert [(u.path, u.module_type) for u in report.unknown] == [("2", layer.__name__)]
    assert reason in report.unknown[0].reason
    assert report.summary() == "1 dynamic conv not converted: 2"
    with pytest.raises(Exception, match=rf"2 \({layer.__name__}: not recognised from its trace: {reason}"):
        report.raise_for_unknown()


def test_a_router_that_keeps_the_probe_batch_is_refused():
    class BatchScaled(PerChannelLoop):  # the attention uses the loop's batch, traced as the number 3
        def forward(self, x):
            n = x.shape[0]
            eta = self.coefficients(x).view(-1, self.experts, self.cout) * (2 / n)
            weight = (eta[..., None, None, None] * self.bases[None]).sum(1)
            return torch.cat([F.conv2d(x[i:i + 1], weight[i], None, 2, 1) for i in range(n)])

    with pytest.raises(NotRecognised, match="no reading"):  # reproduces the probe, not the second batch
        recognise_traced(BatchScaled(8, 8).eval(), torch.zeros(SHAPE))


@pytest.mark.parametrize("block", [False, True], ids=["layer", "block"])
def test_every_odconv_attention_is_found(block):
    """In a block too, the filter attention goes into the layer rather than staying among the block's ops."""
    original = _net((OmniBlock if block else OmniAttentions)(8, 8, 3)).eval()[2]
    recognised = recognise_traced(original, torch.zeros(SHAPE))
    (layer,) = [m for m in recognised.modules() if isinstance(m, RoutedConv2d)]
    assert isinstance(recognised, RoutedConv2d) != block
    routing = layer.routing(random_images(SHAPE))
    assert [f.role for f in layer.router.fields] == ["attention", "spatial", "channel", "filter"]
    assert (routing.attention.shape, routing.spatial.shape, routing.channel.shape, routing.filter.shape) == (
        (3, 4), (3, 3, 3), (3, 8), (3, 8))


# The public implementations that fold the batch into groups, by their trace alone (their adapters not used),
# with the family their math gives; OSVAI with one kernel (no kernel attention: ones) and spatial/channel/filter
# factors too, except its 1x1 single-kernel path, which has no input-dependent weight (a static conv between
# two scales).
PUBLIC_BY_TRACE = {"kaijieshi7_dynamic_conv": "dynamic_conv", "external_attention": "dynamic_conv",
                   "external_attention(CondConv)": "condconv", "osvai_odconv": "odconv",
                   "per_sample_dynamic_conv": "dynamic_conv", "per_sample_odconv": "odconv"}


PUBLIC_CASES = [(label, case) for label in PUBLIC_BY_TRACE for case in LAYER_CASES
                if not (case.static_by_construction(label) or (label == "osvai_odconv" and case.k == case.kernel == 1)
                        or (label == "per_sample_odconv" and case.depthwise))]  # (it has no depthwise form)


@pytest.mark.parametrize("label, case", PUBLIC_CASES, ids=[f"{label}-{case}" for label, case in PUBLIC_CASES])
def test_public_layers_are_recognised_by_their_trace_alone(label, case):
    """The public layers that fold the batch into groups, and the blog posts' that loop over it computing each
    sample's attentions inside the loop."""
    torch.manual_seed(0)
    original = calibrated(FAMILIES[label](case))
    layer = recognise_traced(original, torch.zeros(CASE_SHAPE))
    assert layer.family == PUBLIC_BY_TRACE[label]
    x = images()
    assert_depends_on_input(original, x)
    with torch.no_grad():
        expected = original(x)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        with rolled_attention(layer):
            assert not torch.allclose(layer(x), expected, rtol=1e-3, atol=1e-3), "rolled attention went unnoticed"


class SharedRoutingBlock(nn.Module):
    """EfficientNet-CondConv style, classes of its own: the block computes sigmoid routing weights once and
    passes them to two CondConvs (flattened experts, batch folded), which take ``(x, routing)``."""

    class ExpertConv(nn.Module):
        def __init__(self, cin, cout, k, experts):
            super().__init__()
            self.cout, self.k = cout, k
            self.weight = nn.Parameter(torch.randn(experts, cout * cin * k * k) * 0.3)
            self.bias = nn.Parameter(torch.randn(experts, cout) * 0.5)

        def forward(self, x, routing):
            n, c, h, w = x.shape
            kernels = (routing @ self.weight).view(n * self.cout, c, self.k, self.k)
            y = F.conv2d(x.reshape(1, n * c, h, w), kernels, (routing @ self.bias).view(-1), 1, self.k // 2, 1, n)
            return y.view(n, self.cout, *y.shape[-2:])

    def __init__(self, channels=8, experts=4):
        super().__init__()
        self.route = nn.Linear(channels, experts)
        self.expand = self.ExpertConv(channels, 12, 1, experts)
        self.mix = self.ExpertConv(12, channels, 3, experts)

    def forward(self, x):
        routing = torch.sigmoid(self.route(x.mean((2, 3))))
        return self.mix(F.relu(self.expand(x, routing)), routing)


def test_layers_routed_by_their_parent_are_recognised_with_the_routing_as_an_input():
    model = _net(SharedRoutingBlock())
    converted, report = convert_model(model, random_images(SHAPE))
    assert report.unknown == []
    assert [(r.path, r.family, r.num_kernels) for r in report.converted] == [("2.expand", "traced", 4),
                                                                             ("2.mix", "traced", 4)]
    assert {converted[2].expand.family, converted[2].mix.family} == {"condconv"}
    x = random_images(SHAPE)
    assert_attention_varies(converted, x)
    proto = export_onnx(converted, random_images((1, *SHAPE[1:])))
    assert len(contract_nodes(proto)) == 2
    lowered = lower(proto, "plugin")
    for comparison in verify_onnx(model, lowered, SHAPE, [3], TOLERANCES["fp32"]):
        assert comparison.passed, str(comparison)
    with rolled_attention(converted):
        assert_fails(verify_onnx(converted, lowered, SHAPE, [3]), "giving sample n sample n-1's attention")


class FilterThenResidualOnTheRawResult(OmniAttentions):
    """A block reading the conv's result twice: ``bn(y * filter) + y``; no copy of the original conv may stay."""

    def __init__(self, channels):
        super().__init__(channels, channels, 3)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        n, c, h, w = x.shape
        z = self.squeeze(x)
        channel, filters = torch.sigmoid(self.to_channel(z)), torch.sigmoid(self.to_filter(z))
        spatial = torch.sigmoid(self.to_spatial(z)).view(n, 1, 1, self.k, self.k)
        weight = torch.einsum("nk,kocij->nocij", F.softmax(self.to_kernel(z).flatten(1), dim=1), self.kernels) * spatial
        y = F.conv2d((x * channel).reshape(1, n * c, h, w), weight.reshape(n * self.cout, c, self.k, self.k), None,
                     1, 1, 1, n).view(n, self.cout, h, w)
        return self.bn(y * filters) + y


def test_a_block_that_reads_the_conv_result_twice_keeps_no_copy_of_the_dynamic_conv():
    model = _net(FilterThenResidualOnTheRawResult(8))
    converted, report = convert_model(model, random_images(SHAPE))
    assert [r.path for r in report.converted] == ["2"] and report.unknown == []
    assert find_dynamic_convs(converted, (random_images(SHAPE),)) == []  # the block runs the contract op only
    x = random_images(SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-5)


def test_dtype_geometry_and_mode_are_taken_as_the_layer_has_them():
    layer = StackedSigmoidExperts(8, 6).double().eval()  # float64 stays float64
    recognised = recognise_traced(layer, torch.zeros(SHAPE, dtype=torch.float64))
    x = random_images(SHAPE).double()
    with torch.no_grad():
        torch.testing.assert_close(recognised(x), layer(x))

    class OneElementLists(DynamicConv):  # F.conv2d accepts [s] for stride and dilation, [p] for padding
        def forward(self, x):
            n, c, h, w = x.shape
            kernels = torch.einsum("nk,kmcij->nmcij", self.attention(x.mean((2, 3))), self.weight).flatten(0, 1)
            return F.conv2d(x.reshape(1, n * c, h, w), kernels, None, [2], [1], [1], n).view(n, self.cout, 6, 6)

    assert recognise_traced(OneElementLists(8, 8).eval(), torch.zeros(SHAPE)).stride == (2, 2)
    with pytest.raises(NotRecognised, match="training mode"):
        recognise_traced(DynamicConv(8, 8).train(), torch.zeros(SHAPE))


def test_hard_routing_is_read_and_integer_tensors_are_no_attention():
    class TopOne(DynamicConv):  # one-hot of the argmax: an integer [N, K] before .float()
        def forward(self, x):
            n, c, h, w = x.shape
            a = F.one_hot(self.attention(x.mean((2, 3))).argmax(1), self.K).float()
            kernels = torch.einsum("nk,kmcij->nmcij", a, self.weight).flatten(0, 1)
            return F.conv2d(x.reshape(1, n * c, h, w), kernels, None, 1, 1, 1, n).view(n, self.cout, h, w)

    layer = TopOne(8, 8).eval()
    recognised = recognise_traced(layer, torch.zeros(SHAPE))
    x = random_images((6, *SHAPE[1:]))
    with torch.no_grad():
        torch.testing.assert_close(recognised(x), layer(x))


class ParallelBranches(nn.Module):
    """Two 1x1 convs of one geometry on one input, concatenated, and a gated conv (``a(x) * sigmoid(b(x))``):
    candidates for an experts-first layer that mix no expert outputs by an attention."""

    def __init__(self, channels=8):
        super().__init__()
        self.left, self.right = nn.Conv2d(channels, channels // 2, 1), nn.Conv2d(channels, channels // 2, 1)
        self.value, self.gate = nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], 1) + self.value(x) * torch.sigmoid(self.gate(x))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: a 1x1 expansion to 6x the channels (K = 6 times the block's output), depthwise,
    projection, residual; and a squeeze-excitation scaling the projection by an attention of its own output."""

    def __init__(self, channels=8):
        super().__init__()
        self.expand = nn.Conv2d(channels, 6 * channels, 1)
        self.depthwise = nn.Sequential(nn.Conv2d(6 * channels, 6 * channels, 3, padding=1, groups=6 * channels),
                                       nn.ReLU6())
        self.project = nn.Conv2d(6 * channels, channels, 1)
        self.excite = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.Sigmoid())

    def forward(self, x):
        y = self.project(self.depthwise(F.relu6(self.expand(x))))
        return x + y * self.excite(y)


class SelectiveKernels(nn.Module):
    """SKNet's fusion with two 3x3 branches of one geometry: an attention over the branches computed from their
    own outputs (a dynamic conv reading it would run both branches again in its router)."""

    def __init__(self, channels=8):
        super().__init__()
        self.branches = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in range(2)])
        self.select = nn.Linear(channels, 2)

    def forward(self, x):
        outputs = [branch(x) for branch in self.branches]
        a = torch.softmax(self.select(sum(outputs).mean((2, 3))), 1)
        return a[:, 0, None, None, None] * outputs[0] + a[:, 1, None, None, None] * outputs[1]


@pytest.mark.parametrize("block", [ParallelBranches, InvertedResidual, SelectiveKernels])
def test_ordinary_blocks_that_look_like_expert_convs_are_left_as_they_are(block):
    model = _net(block())
    x = random_images(SHAPE)
    converted, report = convert_model(model, x)
    assert report.converted == [] and report.unknown == []
    assert report.summary() == "already canonical (no foreign dynamic convs)"
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=0, atol=0)


def test_experts_first_candidates_are_found_by_the_convs_they_run():
    """Two or more convs of one geometry on one input, or one with K >= 2 times the module's output channels."""
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), ExpertConvsMixed(8, 8), WideConvPerChannel(8, 6),
                        ParallelBranches(6), InvertedResidual(6), nn.Conv2d(6, 12, 1))
    assert scan_convolutions(net.eval(), (random_images(SHAPE),)).mixtures == ["1", "2", "3", "4"]


def test_a_block_keeps_no_dead_copy_of_the_routing_it_changed_in_place():
    """The gate's in-place edits (``masked_fill_``, ``div_``) run in the router; the block drops its own copy."""
    torch.manual_seed(0)
    model, report = convert_model(_net(ExpertsBesideAShortcut(8)), random_images(SHAPE))
    block = model[2]
    assert [r.family for r in report.converted] == ["traced"] and isinstance(block, torch.fx.GraphModule)
    assert [n.target for n in block.graph.nodes if n.op != "placeholder" and n.op != "output"] == [
        "shortcut", "dynamic_conv", operator.add]


def test_a_gate_run_per_sample_under_vmap_is_counted_for_the_whole_batch():
    """``inspect``'s attention MAdds of a converted loop layer whose gate sees one unbatched sample (vmap: the
    hooks see one sample's tensors): the Linear gate's in_features * K per sample, times the batch."""
    torch.manual_seed(0)
    model, _ = convert_model(_net(GateInTheLoop(8, 8)), random_images(SHAPE))
    assert model[2].router.attentions.sample_attentions.vmapped
    for batch in (2, 4):
        (row,) = analyze(model, (batch, *SHAPE[1:])).layers
        assert row.attention.madds == batch * 8 * 4


def test_the_export_of_a_vmapped_router_falls_back_to_dynamo_with_one_plain_line(caplog, capfd):
    """TorchScript cannot take ``vmap`` (``aten::_softmax``): ``auto`` says so in one line, without the advice
    meant for a last exporter and without the TorchScript IR graph it would print."""
    torch.manual_seed(0)
    model, _ = convert_model(_net(GateInTheLoop(8, 8)), random_images(SHAPE))
    with caplog.at_level(logging.INFO, logger="dyconv_deploy"):
        proto = export_onnx(model, random_images((1, *SHAPE[1:])))
    assert len(contract_nodes(proto)) == 1
    (line,) = [r.getMessage() for r in caplog.records if "instead" in r.getMessage()]
    assert line.startswith("the torchscript exporter cannot take this model") and "Next:" not in line
    assert line.endswith("exporting with dynamo instead")
    printed = capfd.readouterr()
    assert "IR graph" not in printed.out + printed.err

"""Worked example: teach ``dyconv-deploy`` a dynamic conv it does not know.

``ExpertMixConv`` stands for your own layer: K expert kernels mixed per sample by a softmax
gate, one sample at a time in a Python loop over the batch's samples, gate included. No built-in
adapter recognises it, and the loop keeps ``torch.fx`` from tracing it (layers that fold the batch
into conv groups, or loop over it with a gate computed for the whole batch, are recognised from
their trace without an adapter), so ``export`` stops and names it. ``ExpertMixAdapter`` tells the
converter how to rebuild it as the
canonical :class:`~dyconv_deploy.convert.RoutedConv2d`: the trained gate is reused as the
routing branch and the experts (already ``[K, M, C/G, k, k]``) become the contract's weight.

    dyconv-deploy inspect examples/custom_adapter.py:build --input-shape 2x3x16x16 \\
        --adapter examples/custom_adapter.py:ExpertMixAdapter
"""

import torch
import torch.nn.functional as F
from torch import nn

from dyconv_deploy.convert import Adapter, RoutedConv2d
from dyconv_deploy.nn import Routing


class ExpertMixConv(nn.Module):
    """Your layer: ``x [N, C, H, W] -> [N, M, Ho, Wo]`` with a per-sample mixture of ``num_experts`` kernels."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, num_experts=4):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.experts = nn.Parameter(torch.randn(num_experts, out_channels, in_channels, kernel_size, kernel_size) * 0.1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_experts),
                                  nn.Softmax(dim=1))

    def forward(self, x):
        outputs = []
        for sample in x:  # [C, H, W]
            kernel = torch.einsum("k,kmcij->mcij", self.gate(sample[None])[0], self.experts)
            outputs.append(F.conv2d(sample[None], kernel, None, self.stride, self.padding))
        return torch.cat(outputs)


class GateRouting(nn.Module):
    """The routing branch of the canonical layer: your trained gate, returning a ``Routing``."""

    def __init__(self, gate: nn.Module):
        super().__init__()
        self.gate = gate

    def forward(self, x):
        return Routing(attention=self.gate(x))  # [N, K]; add spatial/channel/filter if your layer has them


class ExpertMixAdapter(Adapter):
    family = "expert_mix"

    def matches(self, module, parent):
        # Match by class name and structure, not identity: the CLI may import this file twice.
        return type(module).__name__ == "ExpertMixConv" and hasattr(module, "experts")

    def to_canonical(self, module, parent):
        return RoutedConv2d(GateRouting(module.gate), module.experts, None, stride=module.stride,
                            padding=module.padding, family=self.family)


def build() -> nn.Module:
    """A small network using the layer (the model factory for the CLI example)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), ExpertMixConv(8, 8, 3, padding=1), nn.ReLU(),
                         ExpertMixConv(8, 4, 1, stride=2)).eval()

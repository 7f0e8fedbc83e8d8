"""Worked example: teach ``dyconv-deploy`` a dynamic conv it does not know.

``ExpertMixConv`` stands for your own layer: K expert kernels mixed per sample by a softmax
gate, skipping the experts whose gate is below ``threshold`` (a sparse mixture, cheaper in eager
PyTorch). No built-in adapter recognises it, and the ``if`` on the gate's values keeps ``torch.fx``
from tracing it (layers that fold the batch into conv groups, or loop over it with the gate computed
for the batch or for each sample, are recognised from their trace without an adapter), so ``export``
stops and names it. ``ExpertMixAdapter`` tells the converter how to rebuild it as the
canonical :class:`~dyconv_deploy.convert.RoutedConv2d`: the trained gate is reused as the
routing branch, its skipped experts weighted 0, and the experts (already ``[K, M, C/G, k, k]``)
become the contract's weight.

    dyconv-deploy inspect examples/custom_adapter.py:build --input-shape 2x3x16x16 \\
        --adapter examples/custom_adapter.py:ExpertMixAdapter
"""

import torch
import torch.nn.functional as F
from torch import nn

from dyconv_deploy.convert import Adapter, RoutedConv2d
from dyconv_deploy.nn import Routing


class ExpertMixConv(nn.Module):
    """Your layer: ``x [N, C, H, W] -> [N, M, Ho, Wo]`` with a per-sample mixture of ``num_experts`` kernels, the
    experts whose gate is below ``threshold`` left out (below ``1 / num_experts``, so one expert always stays)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, num_experts=4, threshold=0.1):
        super().__init__()
        self.stride, self.padding, self.threshold = stride, padding, threshold
        self.experts = nn.Parameter(torch.randn(num_experts, out_channels, in_channels, kernel_size, kernel_size) * 0.1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_experts),
                                  nn.Softmax(dim=1))

    def forward(self, x):
        outputs = []
        for sample, gates in zip(x, self.gate(x)):  # [C, H, W], [K]
            kernel = sum(g * expert for g, expert in zip(gates, self.experts) if g >= self.threshold)
            outputs.append(F.conv2d(sample[None], kernel, None, self.stride, self.padding))
        return torch.cat(outputs)


class GateRouting(nn.Module):
    """The routing branch of the canonical layer: your trained gate, returning a ``Routing``."""

    def __init__(self, gate: nn.Module, threshold: float):
        super().__init__()
        self.gate = gate
        self.threshold = threshold

    def forward(self, x):
        gates = self.gate(x)  # [N, K]
        return Routing(attention=gates * (gates >= self.threshold))  # add spatial/channel/filter if yours has them


class ExpertMixAdapter(Adapter):
    family = "expert_mix"

    def matches(self, module, parent):
        # Match by class name and structure, not identity: the CLI may import this file twice.
        return type(module).__name__ == "ExpertMixConv" and hasattr(module, "experts")

    def to_canonical(self, module, parent):
        return RoutedConv2d(GateRouting(module.gate, module.threshold), module.experts, None, stride=module.stride,
                            padding=module.padding, family=self.family)


def build() -> nn.Module:
    """A small network using the layer (the model factory for the CLI example)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), ExpertMixConv(8, 8, 3, padding=1), nn.ReLU(),
                         ExpertMixConv(8, 4, 1, stride=2)).eval()

"""Blog-post ``DynamicConv2D(_ConvNd)`` / ``ODConv2D(_ConvNd)``: one ``F.conv2d`` per sample.

These layers (e.g. the 0809zheng.github.io DynamicConv/ODConv posts) loop over the batch:
for each sample, ``_attention_fn`` maps the pooled ``[1, C, 1, 1]`` input (flattened to
``[C]``) to its attentions, kernels are mixed, and the static ``_ConvNd`` bias ``[M]`` is
added by the conv. The canonical layer computes the same attentions for the whole batch
with the original ``_attention_fn`` submodules (softmax over dim 1 instead of 0) and keeps
the bias as a static output bias. Only ``padding_mode='zeros'`` is representable.
"""

import torch
from torch import Tensor, nn

from dyconv_deploy.convert.registry import Adapter, register
from dyconv_deploy.convert.routed import RoutedConv2d
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.nn import Routing


class ExpertSoftmaxRouting(nn.Module):
    """Batched ``_attention``: ``softmax(block(GAP(x)) / tau)`` ``[N, K]``."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, x: Tensor) -> Routing:
        logits = self.attention.block(x.mean(dim=(2, 3)))
        return Routing(torch.softmax(logits / self.attention.tau, dim=1))


class OmniRouting(nn.Module):
    """Batched ODConv ``_attention``: spatial, input-channel, filter sigmoids and a kernel softmax."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, x: Tensor) -> Routing:
        a = self.attention
        h = a.fc(x.mean(dim=(2, 3)))
        k = a.kernel_size
        return Routing(attention=torch.softmax(a.fc_an(h), dim=1),
                       spatial=torch.sigmoid(a.fc_as(h)).reshape(-1, k, k),
                       channel=torch.sigmoid(a.fc_ac(h)),
                       filter=torch.sigmoid(a.fc_af(h)))


class PerSampleLoopAdapter(Adapter):
    """``class_name`` with 5-D experts and an ``_attention_fn`` having ``attention_attributes``."""

    class_name = ""
    canonical_family = ""  # the canonical layer's family: the math of its attention
    attention_attributes: tuple[str, ...] = ()
    routing: type[nn.Module]  # builds the batched routing from the original ``_attention_fn``

    def matches(self, module: nn.Module, parent: nn.Module) -> bool:
        attention = getattr(module, "_attention_fn", None)
        weight = getattr(module, "weight", None)
        return (type(module).__name__ == self.class_name and isinstance(weight, Tensor) and weight.dim() == 5
                and all(hasattr(attention, name) for name in self.attention_attributes))

    def to_canonical(self, module: nn.Module, parent: nn.Module) -> RoutedConv2d:
        if module.padding_mode != "zeros":
            raise DyconvError(f"{type(module).__name__} with padding_mode={module.padding_mode!r} cannot be "
                              f"converted: the contract op pads with zeros only")
        return RoutedConv2d(self.routing(module._attention_fn), module.weight, None, stride=module.stride,
                            padding=module.padding, dilation=module.dilation, groups=module.groups,
                            output_bias=module.bias, family=self.canonical_family)


@register
class PerSampleDynamicConvAdapter(PerSampleLoopAdapter):
    family = "per_sample_dynamic_conv"
    class_name = "DynamicConv2D"
    canonical_family = "dynamic_conv"
    attention_attributes = ("block", "tau")
    routing = ExpertSoftmaxRouting


@register
class PerSampleODConvAdapter(PerSampleLoopAdapter):
    family = "per_sample_odconv"
    class_name = "ODConv2D"
    canonical_family = "odconv"
    attention_attributes = ("fc", "fc_as", "fc_ac", "fc_af", "fc_an", "kernel_size")
    routing = OmniRouting

"""Batch-folded dynamic convs with an ``attention`` submodule returning ``[N, K]``.

Covers kaijieshi7 ``Dynamic_conv2d`` / ``attention2d`` (Dynamic-convolution-Pytorch,
softmax with temperature) and External-Attention-pytorch ``DynamicConv`` (softmax with
``temprature``) and ``CondConv`` (sigmoid). All store ``weight [K, M, C/G, k, k]`` and
``bias [K, M]`` (or None), aggregate with ``attention @ weight`` and fold the batch into
conv groups. The canonical layer calls the trained ``attention`` module unchanged; its family
is the math of the class's attention (softmax: ``dynamic_conv``, sigmoid: ``condconv``).
"""

from torch import Tensor, nn

from dyconv_deploy.convert.registry import Adapter, register
from dyconv_deploy.convert.routed import RoutedConv2d
from dyconv_deploy.nn import Routing


class AttentionRouting(nn.Module):
    """Wraps a module ``x [N, C, H, W] -> attention [N, K]``."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, x: Tensor) -> Routing:
        return Routing(self.attention(x))


class FoldedAttentionAdapter(Adapter):
    """Matches the classes of ``families`` (class name -> family) that have ``attention``, ``K`` and 5-D experts."""

    families: dict[str, str] = {}

    def matches(self, module: nn.Module, parent: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return (type(module).__name__ in self.families and isinstance(getattr(module, "attention", None), nn.Module)
                and hasattr(module, "K") and isinstance(weight, Tensor) and weight.dim() == 5)

    def to_canonical(self, module: nn.Module, parent: nn.Module) -> RoutedConv2d:
        bias = module.bias if isinstance(module.bias, Tensor) else None
        return RoutedConv2d(AttentionRouting(module.attention), module.weight, bias, stride=module.stride,
                            padding=module.padding, dilation=module.dilation, groups=module.groups,
                            family=self.families[type(module).__name__])


@register
class KaijieshiDynamicConvAdapter(FoldedAttentionAdapter):
    family = "kaijieshi7_dynamic_conv"
    families = {"Dynamic_conv2d": "dynamic_conv"}


@register
class ExternalAttentionAdapter(FoldedAttentionAdapter):
    family = "external_attention"
    families = {"DynamicConv": "dynamic_conv", "CondConv": "condconv"}

"""timm ``CondConv2d`` (``timm/layers/cond_conv2d.py``) as used by ``efficientnet_cc_*``.

timm stores the experts flattened, ``weight [K, M * C/G * kH * kW]`` and ``bias [K, M]``, and
the conv takes its routing as a forward argument: ``CondConvResidual`` computes
``sigmoid(routing_fn(GAP(x)))`` once from the block input and passes it to ``conv_pw``,
``conv_dw`` and ``conv_pwl``. The canonical layer takes the same argument, so the parent
block runs unchanged (its routing stays ordinary ops, computed once) and each CondConv2d
becomes one contract node. 'same' padding that timm computes per call (stride > 1) is
computed per call here too.
"""

from torch import Tensor, nn

from dyconv_deploy.convert.registry import Adapter, register
from dyconv_deploy.convert.routed import RoutedConv2d
from dyconv_deploy.nn import Routing


class GivenRouting(nn.Module):
    """Routing passed in by the caller: ``(x, routing_weights [N, K]) -> Routing``."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts = num_experts

    def forward(self, x: Tensor, routing_weights: Tensor) -> Routing:
        return Routing(routing_weights)

    def probe_arguments(self, x: Tensor) -> tuple[Tensor]:
        """Stand-in routing weights ``[N, K]`` (all 0.5, sigmoid(0)) for layout probes."""
        return (x.new_full((x.shape[0], self.num_experts), 0.5),)


@register
class TimmCondConvAdapter(Adapter):
    family = "timm_condconv"

    def matches(self, module: nn.Module, parent: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return (type(module).__name__ == "CondConv2d" and hasattr(module, "weight_shape")
                and hasattr(module, "dynamic_padding") and isinstance(weight, Tensor) and weight.dim() == 2)

    def to_canonical(self, module: nn.Module, parent: nn.Module) -> RoutedConv2d:
        weight = module.weight.reshape(module.num_experts, *module.weight_shape)
        return RoutedConv2d(GivenRouting(module.num_experts), weight, module.bias, stride=module.stride,
                            padding=module.padding, dilation=module.dilation, groups=module.groups,
                            same_padding=module.dynamic_padding, family="condconv")

"""OSVAI ``ODConv2d`` with its ``Attention`` module (``OSVAI/ODConv`` ``modules/odconv.py``).

The original ``Attention`` returns ``(channel [N,C,1,1], filter [N,M,1,1] | 1.0,
spatial [N,1,1,1,k,k] | 1.0, kernel [N,K,1,1,1,1] | 1.0)`` (1.0 where a head is skipped:
depthwise, 1x1 kernels, kernel_num = 1). The canonical layer calls that trained module
as is and reshapes its outputs into a :class:`~dyconv_deploy.nn.Routing`; the ``pw1x``
path (1x1, one kernel) is the same function with attention 1.
"""

from torch import Tensor, nn

from dyconv_deploy.convert.registry import Adapter, register
from dyconv_deploy.convert.routed import RoutedConv2d
from dyconv_deploy.nn import Routing


class OmniAttentionRouting(nn.Module):
    """Wraps OSVAI's ``Attention``: ``x -> Routing(kernel, spatial, channel, filter)``."""

    def __init__(self, attention: nn.Module, kernel_size: tuple[int, int]):
        super().__init__()
        self.attention = attention
        self.kernel_size = kernel_size

    def forward(self, x: Tensor) -> Routing:
        channel, filt, spatial, kernel = self.attention(x)
        n = x.shape[0]
        return Routing(
            attention=kernel.reshape(n, -1) if isinstance(kernel, Tensor) else x.new_ones(n, 1),
            spatial=spatial.reshape(n, *self.kernel_size) if isinstance(spatial, Tensor) else None,
            channel=channel.reshape(n, -1),
            filter=filt.reshape(n, -1) if isinstance(filt, Tensor) else None,
        )


@register
class OSVAIODConvAdapter(Adapter):
    family = "osvai_odconv"

    def matches(self, module: nn.Module, parent: nn.Module) -> bool:
        attention = getattr(module, "attention", None)
        return (type(module).__name__ == "ODConv2d" and hasattr(module, "kernel_num")
                and all(hasattr(attention, f) for f in ("func_channel", "func_filter", "func_spatial",
                                                        "func_kernel")))

    def to_canonical(self, module: nn.Module, parent: nn.Module) -> RoutedConv2d:
        kernel_size = tuple(module.weight.shape[-2:])
        return RoutedConv2d(OmniAttentionRouting(module.attention, kernel_size), module.weight, None,
                            stride=module.stride, padding=module.padding, dilation=module.dilation,
                            groups=module.groups, family="odconv")

"""``RoutedConv2d``: the canonical layer for a foreign dynamic conv, routed by the user's own modules.

An adapter keeps the original attention branch (its trained submodules, wrapped in a small
*router* module that returns a :class:`~dyconv_deploy.nn.Routing`) and moves the expert kernels
into the contract layout, so the attention stays ordinary ONNX and the convolution becomes one
``dyconv::DynamicConv2d`` node. Forward::

    y = filter * dynamic_conv2d(x * channel, attention, weight, bias, spatial) + output_bias

Shapes: ``x [N, C, H, W] -> y [N, M, Ho, Wo]``; ``weight [K, M, C/G, kH, kW]``; ``bias [K, M]``;
``output_bias [M]`` (a static bias added after the filter attention, as in per-sample-loop layers).
"""

from typing import Optional

import torch
from torch import Tensor, nn

from dyconv_deploy.nn.base import DynamicConvBase, Routing


class RoutedConv2d(DynamicConvBase):
    """Dynamic conv whose routing is ``router(x, *routing_args) -> Routing``.

    Args:
        router: module computing the routing; extra forward arguments of this layer are passed
            to it (timm's CondConv receives its routing weights from the parent block).
        weight: expert kernels ``[K, M, C/G, kH, kW]`` (copied). bias: ``[K, M]`` or None (copied).
        same_padding: TensorFlow 'SAME' padding computed from the input size at each call
            (timm's dynamic padding); ``padding`` is then unused.
        output_bias: static ``[M]`` bias added last, or None.
        family: the kind of dynamic conv by its math, in the names of the native layers
            (``dynamic_conv``: softmax over the experts, ``condconv``: sigmoid routing, ``odconv``,
            ``dynet``); the converter records the adapter that built the layer as ``source``.
    """

    def __init__(self, router: nn.Module, weight: Tensor, bias: Optional[Tensor] = None, *, stride=1, padding=0,
                 dilation=1, groups: int = 1, same_padding: bool = False, output_bias: Optional[Tensor] = None,
                 family: str = "routed"):
        k, m, c_per_group, kh, kw = weight.shape
        super().__init__(c_per_group * groups, m, (kh, kw), stride, padding, dilation, groups, bias is not None, k)
        self.router = router
        self.family = family
        self.same_padding = same_padding
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias.reshape(k, m))
        self.output_bias = None if output_bias is None else nn.Parameter(output_bias.detach().clone().reshape(m))

    def reset_expert_parameters(self) -> None:
        """Experts come from the original module; nothing to initialise."""

    def routing(self, x: Tensor, *routing_args) -> Routing:
        """The router's output; a router that needs arguments (timm) gets its ``probe_arguments(x)``
        when called without them, so layout probes (``inspect``) can call ``routing(x)`` alone."""
        if not routing_args and hasattr(self.router, "probe_arguments"):
            routing_args = self.router.probe_arguments(x)
        return self.router(x, *routing_args)

    def forward(self, x: Tensor, *routing_args) -> Tensor:
        """``x [N, C, H, W]`` (plus whatever the original layer took) ``-> [N, M, Ho, Wo]``."""
        # 'same' pads are attributes of the contract node: the spatial size is static in every export
        padding = (same_padding([int(v) for v in x.shape[-2:]], self.kernel_size, self.stride, self.dilation)
                   if self.same_padding else None)
        y = self.routed_conv(x, self.router(x, *routing_args), padding)
        if self.output_bias is not None:
            y = y + self.output_bias[:, None, None]
        return y

    def extra_repr(self) -> str:
        return f"family={self.family!r}, " + super().extra_repr() + (", same_padding=True" if self.same_padding else "")


def same_padding(size, kernel_size, stride, dilation) -> tuple[int, int, int, int]:
    """TensorFlow 'SAME' padding ``(top, left, bottom, right)`` for an input of spatial ``size``."""
    pads = []
    for i, k, s, d in zip(size, kernel_size, stride, dilation):
        pads.append(max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0))
    (ph, pw) = pads
    return ph // 2, pw // 2, ph - ph // 2, pw - pw // 2

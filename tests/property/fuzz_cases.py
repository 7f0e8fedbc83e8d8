"""Random dynamic-conv layer cases for the property tests, and their views as the other suites' configs.

A :class:`FuzzCase` is one layer of one family (``tests/nn``'s ``LAYERS``: dynamic_conv, condconv, dynet,
odconv) with a random geometry and batch; it converts to the configs of the existing helpers rather than
repeating them: it is itself the config ``make_layer`` reads, :meth:`FuzzCase.node` is the
``tests/lower/graphs.py`` contract node, :meth:`FuzzCase.kernel_config` the ``tests/plugins`` kernel config.
"""

from dataclasses import dataclass

from graphs import Node
from hypothesis import strategies as st
from layer_configs import LayerConfig
from layer_models import FAMILIES

from dyconv_deploy.ops.contract import output_size

KERNELS = (1, 3, 5)
MAX_BATCH = 5
MAX_EXTRA_SIZE = 6  # planes from the smallest valid size up to this much larger
# Upper bounds of wide cases: 48 x 25 = 1200-term reductions (2+ split-K slices of 4 x 16), 80 output
# channels per group (two 64-row tiles), planes 20 larger (several 64-pixel tiles, the aggregated path).
WIDE = {"in_per_group": 48, "out_per_group": 80, "extra_size": 20}


@dataclass(frozen=True)
class FuzzCase:
    """``x [batch, in_channels, h, w]`` through a ``family`` layer with K = ``num_kernels`` experts.

    ``padding`` is (top, left, bottom, right); ``stride`` and ``dilation`` are (h, w). ``spatial``: an ODConv
    layer has its own spatial attention (kernels > 1); any other family gets a random per-sample
    ``S [N, k, k]`` injected into its routing (a combination no layer has and the contract allows).
    ``seed`` seeds the layer's parameters and the inputs.
    """

    family: str
    kernel: int
    in_channels: int
    out_channels: int
    groups: int
    stride: tuple
    padding: tuple
    dilation: tuple
    h: int
    w: int
    num_kernels: int
    bias: bool
    spatial: bool
    batch: int
    seed: int

    @property
    def channel_attention(self) -> bool:
        """DyNet's attention ``[N, K, M]``; the other families' is ``[N, K]``."""
        return self.family == "dynet"

    @property
    def injects_spatial(self) -> bool:
        return self.spatial and self.family != "odconv"

    @property
    def output_hw(self) -> tuple[int, int]:
        return (output_size(self.h, self.padding[0], self.padding[2], self.kernel, self.stride[0], self.dilation[0]),
                output_size(self.w, self.padding[1], self.padding[3], self.kernel, self.stride[1], self.dilation[1]))

    def node(self) -> Node:
        """The contract node of ``tests/lower/graphs.py`` (square planes only), routed as the family is."""
        assert self.h == self.w, f"graphs.Node has square planes, not {self.h}x{self.w}"
        return Node(repr(self), c=self.in_channels, m=self.out_channels, experts=self.num_kernels,
                    kernel=self.kernel, size=self.h, strides=self.stride, pads=self.padding, dilations=self.dilation,
                    groups=self.groups, bias=self.bias, per_channel=self.channel_attention, spatial=self.spatial,
                    routing="Sigmoid" if self.family in ("condconv", "dynet") else "Softmax")

    def kernel_config(self) -> LayerConfig:
        """The config of ``tests/plugins`` (the emulated and CUDA kernel tests)."""
        return LayerConfig(repr(self), c=self.in_channels, m=self.out_channels, experts=self.num_kernels,
                           kernel=self.kernel, h=self.h, w=self.w, stride=self.stride, padding=self.padding,
                           dilation=self.dilation, groups=self.groups, channel_attention=self.channel_attention,
                           bias=self.bias, spatial=self.spatial)


def _smallest_size(kernel: int, dilation: int, pad_begin: int, pad_end: int) -> int:
    """The smallest plane size with at least one output along this axis."""
    return max(1, dilation * (kernel - 1) + 1 - pad_begin - pad_end)


@st.composite
def fuzz_cases(draw, square: bool = False, wide: bool = False) -> FuzzCase:
    """Kernel 1/3/5, stride and dilation 1..3 per axis, padding 0..k per side, groups 1..4 (depthwise up to 6,
    with a channel multiplier 1..3), 1..3 input channels per group, K 1..8, bias or not, spatial attention or
    not, planes from the smallest valid size (1x1 where the padding allows) up to 6 larger, batch 1..5.
    ``wide`` also draws sizes beyond one GEMM tile of ``plugins/kernels`` (:data:`WIDE`): more tiles along
    the pixels, the output channels and the reduction, and reductions long enough to split (split-K).
    Shrinks towards small, dense, symmetric cases."""
    def size(small: int, large: int) -> int:
        return draw(st.integers(1, small) | st.integers(small + 1, large) if wide else st.integers(1, small))

    family = draw(st.sampled_from(FAMILIES))
    kernel = draw(st.sampled_from(KERNELS))
    depthwise = draw(st.booleans())
    groups = draw(st.integers(1, 6 if depthwise else 4))
    in_per_group = 1 if depthwise else size(3, WIDE["in_per_group"])
    out_per_group = size(3, WIDE["out_per_group"])
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, kernel)) for _ in range(4))
    smallest = [_smallest_size(kernel, dilation[axis], padding[axis], padding[axis + 2]) for axis in range(2)]
    if square:
        smallest = [max(smallest)] * 2
    h = smallest[0] - 1 + size(MAX_EXTRA_SIZE + 1, WIDE["extra_size"] + 1)
    w = h if square else smallest[1] - 1 + size(MAX_EXTRA_SIZE + 1, WIDE["extra_size"] + 1)
    return FuzzCase(
        family=family, kernel=kernel, in_channels=groups * in_per_group, out_channels=groups * out_per_group,
        groups=groups, stride=stride, padding=padding, dilation=dilation, h=h, w=w,
        num_kernels=draw(st.integers(1, 8)), bias=draw(st.booleans()),
        spatial=kernel > 1 if family == "odconv" else draw(st.booleans()),
        batch=draw(st.integers(1, MAX_BATCH)), seed=draw(st.integers(0, 2**32 - 1)))

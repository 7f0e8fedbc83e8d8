"""Layer configurations shared by the kernel tests (emulated on CPU and on a CUDA device).

Each config covers one code path of ``plugins/kernels``: pointwise GEMM, k x k implicit GEMM
(stride, asymmetric padding, dilation, groups), depthwise with and without a channel
multiplier, DyNet channel attention, ODConv spatial attention, a plane large enough for the
aggregated path, reductions deep enough for split-K, and reductions of >= 1000 terms, where
fp16 accumulation is far outside the ``fp16-kernel`` tolerance that fp32 accumulation meets.
:data:`KERNEL_CONFIGS` adds the shapes that only the kernels' tiling cares about.
"""

from dataclasses import dataclass

import torch

from dyconv_deploy.ops.contract import output_size


@dataclass(frozen=True)
class LayerConfig:
    """One dynamic conv layer: ``X [N, c, h, w]``, ``W [experts, m, c/groups, kernel, kernel]``."""

    name: str
    c: int
    m: int
    experts: int
    kernel: int
    h: int
    w: int
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple = (1, 1)
    groups: int = 1
    channel_attention: bool = False
    bias: bool = True
    spatial: bool = False

    @property
    def depthwise(self) -> bool:
        return self.c // self.groups == 1

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, unpadded: the conv is a GEMM over X itself (the cuBLAS path's shapes)."""
        return self.kernel == 1 and self.stride == (1, 1) and self.padding == (0, 0, 0, 0)

    @property
    def reduction(self) -> int:
        """GEMM reduction length ``C/groups * kH * kW``."""
        return self.c // self.groups * self.kernel * self.kernel

    @property
    def output_hw(self) -> tuple[int, int]:
        return (output_size(self.h, self.padding[0], self.padding[2], self.kernel, self.stride[0], self.dilation[0]),
                output_size(self.w, self.padding[1], self.padding[3], self.kernel, self.stride[1], self.dilation[1]))

    def inputs(self, batch: int, generator: torch.Generator) -> dict:
        """Random ``x, attention, weight, bias, spatial`` (float32, CPU) for ``batch`` samples."""
        def randn(*shape):
            return torch.randn(*shape, generator=generator)

        attention_shape = (batch, self.experts, self.m) if self.channel_attention else (batch, self.experts)
        return {
            "x": randn(batch, self.c, self.h, self.w),
            "attention": torch.softmax(randn(*attention_shape), dim=1),
            "weight": randn(self.experts, self.m, self.c // self.groups, self.kernel, self.kernel) * 0.3,
            "bias": randn(self.experts, self.m) if self.bias else None,
            "spatial": torch.sigmoid(randn(batch, self.kernel, self.kernel)) if self.spatial else None,
        }

    def conv_kwargs(self) -> dict:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}


LAYER_CONFIGS = [
    LayerConfig("pointwise", c=16, m=24, experts=4, kernel=1, h=8, w=8),
    LayerConfig("pointwise-stride2", c=8, m=12, experts=2, kernel=1, h=9, w=9, stride=(2, 2), bias=False),
    LayerConfig("3x3", c=8, m=16, experts=3, kernel=3, h=9, w=9, padding=(1, 1, 1, 1)),
    LayerConfig("3x3-stride2-asym-pad", c=6, m=10, experts=4, kernel=3, h=10, w=11, stride=(2, 2),
                padding=(1, 0, 0, 1)),
    LayerConfig("3x3-grouped-dilated-dynet", c=8, m=12, experts=3, kernel=3, h=9, w=9, padding=(2, 2, 2, 2),
                dilation=(2, 2), groups=2, channel_attention=True),
    LayerConfig("3x3-odconv-spatial", c=8, m=8, experts=4, kernel=3, h=7, w=7, padding=(1, 1, 1, 1), spatial=True),
    LayerConfig("depthwise-3x3-stride2", c=12, m=12, experts=4, kernel=3, h=9, w=9, stride=(2, 2),
                padding=(1, 1, 1, 1), groups=12, spatial=True),
    LayerConfig("depthwise-5x5-multiplier-dilated", c=6, m=12, experts=2, kernel=5, h=10, w=10,
                padding=(4, 4, 4, 4), dilation=(2, 2), groups=6, channel_attention=True),
    LayerConfig("3x3-large-plane", c=4, m=8, experts=2, kernel=3, h=20, w=20, padding=(1, 1, 1, 1)),
    # Deep reductions (C/G*kH*kW >= 128), where small grids split the reduction (split-K).
    LayerConfig("pointwise-deep-7x7", c=160, m=24, experts=4, kernel=1, h=7, w=7),
    LayerConfig("3x3-deep-dynet", c=32, m=12, experts=2, kernel=3, h=6, w=6, padding=(1, 1, 1, 1),
                channel_attention=True),
    # Reductions of >= 1000 terms (pointwise and implicit-GEMM kernels): see TOLERANCES["fp16-kernel"].
    LayerConfig("pointwise-1024-deep", c=1024, m=8, experts=2, kernel=1, h=4, w=4),
    LayerConfig("3x3-1008-deep", c=112, m=8, experts=4, kernel=3, h=5, w=5, padding=(1, 1, 1, 1)),
]

# Tiling of plugins/kernels: more than one GEMM tile of output channels per group (64 and 32), a depthwise
# plane spanning two pixel blocks (256 threads), and 2 x 2 tensor-core tiles: an offset wrong in the second tile or
# block shows only here.
TILE_CONFIGS = [
    # Pointwise on 144 pixels: 3 narrow and 2 wide (tensor-core-fused, 128-column) blocks of pixels, the last of
    # each partly filled, times two 64-row tiles.
    LayerConfig("pointwise-m-two-tiles", c=8, m=72, experts=2, kernel=1, h=12, w=12),
    LayerConfig("3x3-grouped-m-two-tiles-deep", c=32, m=144, experts=2, kernel=3, h=4, w=4, padding=(1, 1, 1, 1),
                groups=2),
    LayerConfig("depthwise-3x3-289-pixels", c=2, m=2, experts=2, kernel=3, h=17, w=17, padding=(1, 1, 1, 1),
                groups=2),
    # Two 64-tiles of output channels and of pixels per group at once (the tensor-core path's 2 x 2 blocks), a
    # reduction of 27, DyNet attention: each block's M and pixel offsets, and its tile's edges, both ways.
    LayerConfig("3x3-grouped-two-by-two-mma-tiles", c=6, m=144, experts=2, kernel=3, h=9, w=9, padding=(1, 1, 1, 1),
                groups=2, channel_attention=True),
    # tensor-core-experts: three experts leave 21 channels and an unused row per 64-row tile; 48 channels are
    # three tiles, the last one partial, and ODConv's spatial attention scales X per tap.
    LayerConfig("3x3-three-experts-three-channel-tiles", c=4, m=48, experts=3, kernel=3, h=6, w=6,
                padding=(1, 1, 1, 1), spatial=True),
]
KERNEL_CONFIGS = LAYER_CONFIGS + TILE_CONFIGS

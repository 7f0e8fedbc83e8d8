"""Random inputs of the contract op for a few geometries (shared by the ops tests)."""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OpCase:
    """``X [N, C, H, W]``, ``W [K, M, C/G, k, k]``; rank-3 attention (DyNet) and spatial (ODConv) optional."""

    name: str
    n: int = 2
    c: int = 4
    m: int = 6
    k: int = 4
    kernel: int = 3
    size: int = 7
    stride: tuple = (1, 1)
    padding: tuple = (1, 1, 1, 1)
    dilation: tuple = (1, 1)
    groups: int = 1
    bias: bool = True
    per_channel: bool = False
    spatial: bool = False

    def inputs(self) -> dict:
        attention = torch.rand(self.n, self.k, self.m) if self.per_channel else torch.softmax(
            torch.randn(self.n, self.k), dim=1)
        return {
            "x": torch.randn(self.n, self.c, self.size, self.size),
            "attention": attention,
            "weight": torch.randn(self.k, self.m, self.c // self.groups, self.kernel, self.kernel),
            "bias": torch.randn(self.k, self.m) if self.bias else None,
            "spatial": torch.rand(self.n, self.kernel, self.kernel) if self.spatial else None,
        }

    def conv_args(self) -> dict:
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}


CASES = [
    OpCase("3x3"),
    OpCase("1x1-stride2-nobias", kernel=1, stride=(2, 2), padding=(0, 0, 0, 0), bias=False, n=3),
    OpCase("3x3-asymmetric-padding-stride2", padding=(0, 1, 2, 1), stride=(2, 2)),
    OpCase("5x5-dilation2-groups2-dynet", kernel=5, padding=(4, 4, 4, 4), dilation=(2, 2), groups=2,
           per_channel=True),
    OpCase("3x3-depthwise-spatial", c=6, m=6, groups=6, spatial=True, n=1),
]

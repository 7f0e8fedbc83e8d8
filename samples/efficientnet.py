"""EfficientNet-B0 (Tan & Le, ICML 2019) written once over a conv factory.

The CondConv variant follows timm's ``efficientnet_cc_b0_8e`` (Yang et al., NeurIPS 2019):
the factory builds the convs of the last three stages (timm's ``_cc4`` stages, 4 experts
times an experts multiplier of 2 = 8), everything else is static; squeeze-excite and
swish (SiLU) everywhere. Unlike timm, whose routing is one ``Linear(in, experts)`` per
block shared by its three convs, each CondConv layer here routes on its own input.
Shapes: ``x [N, 3, H, W] -> logits [N, num_classes]`` (224 in the papers).
"""

from torch import Tensor, nn

from dyconv_deploy.samples.blocks import ConvFactory, InvertedResidual, conv_bn

# (kernel, stride, expand ratio, output channels, repeats, built by the factory?) per stage.
STAGES = ((3, 1, 1, 16, 1, False), (3, 2, 6, 24, 2, False), (5, 2, 6, 40, 2, False), (3, 2, 6, 80, 3, False),
          (5, 1, 6, 112, 3, True), (5, 2, 6, 192, 4, True), (3, 1, 6, 320, 1, True))
SE_RATIO = 0.25


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 whose last three stages' convs come from ``conv``."""

    def __init__(self, conv: ConvFactory = nn.Conv2d, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        swish = nn.SiLU
        channels = 32
        blocks = []
        for kernel, stride, expand, out, repeats, dynamic in STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(conv if dynamic else nn.Conv2d, channels, out, kernel,
                                               stride if i == 0 else 1, expand, swish, SE_RATIO))
                channels = out
        self.stem = conv_bn(nn.Conv2d, 3, 32, 3, stride=2, activation=swish)
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(nn.Conv2d, channels, 1280, 1, activation=swish)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))).mean(dim=(2, 3)))

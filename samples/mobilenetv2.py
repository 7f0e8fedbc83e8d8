"""MobileNetV2 (Sandler et al., CVPR 2018) written once over a conv factory.

Dynamic variants follow their papers: every conv but the stem is built by the factory
(DY-MobileNetV2, Chen et al. CVPR 2020; ODConv-MobileNetV2, Li et al. ICLR 2022 and
OSVAI/ODConv ``od_mobilenetv2``); the classifier stays a plain ``nn.Linear``.
Shapes: ``x [N, 3, H, W] -> logits [N, num_classes]`` (H, W multiples of 32; 224 in the papers).
"""

from torch import Tensor, nn

from dyconv_deploy.samples.blocks import ConvFactory, InvertedResidual, conv_bn, make_divisible

# (expand ratio t, output channels c, repeats n, first stride s) of the paper's Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 whose convs (all but the stem) come from ``conv``."""

    def __init__(self, conv: ConvFactory = nn.Conv2d, width: float = 1.0, num_classes: int = 1000,
                 dropout: float = 0.2):
        super().__init__()
        relu6 = nn.ReLU6
        channels = make_divisible(32 * width)
        last_channels = make_divisible(1280 * max(1.0, width))
        features = [conv_bn(nn.Conv2d, 3, channels, 3, stride=2, activation=relu6)]
        for expand, out, repeats, stride in STAGES:
            out = make_divisible(out * width)
            for i in range(repeats):
                features.append(InvertedResidual(conv, channels, out, 3, stride if i == 0 else 1, expand, relu6))
                channels = out
        features.append(conv_bn(conv, channels, last_channels, 1, activation=relu6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))

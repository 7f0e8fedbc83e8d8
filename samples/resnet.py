"""ResNet-18 (He et al., CVPR 2016) written once over a conv factory.

DY-ResNet-18 (Chen et al., CVPR 2020) builds every conv of the residual blocks, shortcut
projections included, with the factory; the 7x7 stem and the classifier stay static.
Shapes: ``x [N, 3, H, W] -> logits [N, num_classes]`` (224 in the papers).
"""

from torch import Tensor, nn

from dyconv_deploy.samples.blocks import ConvFactory


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 projection when the shape changes."""

    def __init__(self, conv: ConvFactory, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, padding=0, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + shortcut)


class ResNet18(nn.Module):
    """ResNet-18 (torchvision layout) whose residual-block convs come from ``conv``."""

    def __init__(self, conv: ConvFactory = nn.Conv2d, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        stages, channels = [], 64
        for out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(conv, channels, out, stride), BasicBlock(conv, out, out, 1)))
            channels = out
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))

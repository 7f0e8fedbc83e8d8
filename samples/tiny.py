"""A tiny network with one layer of every dynamic family, for fast tests and demos.

Layout for ``x [N, 3, 32, 32]``: static 3x3 stem (8 ch), then four factory convs —
3x3 stride 2 (16 ch, 16x16), 3x3 depthwise (16 ch), 3x3 stride 2 (24 ch, 8x8), 1x1 (32 ch) —
each followed by BatchNorm and its activation, then global pooling and a 10-way linear.
Any H, W >= 4 works.
"""

from typing import Callable, Sequence

from torch import Tensor, nn

from dyconv_deploy.samples.blocks import ConvFactory

# (out channels, kernel, stride, depthwise) of the four factory-built convs.
LAYERS = ((16, 3, 2, False), (16, 3, 1, True), (24, 3, 2, False), (32, 1, 1, False))


class TinyNet(nn.Module):
    """Static stem, then ``convs[i]`` + BN + ``activations[i](channels)`` for the four layers."""

    def __init__(self, convs: Sequence[ConvFactory], activations: Sequence[Callable[[int], nn.Module]],
                 num_classes: int = 10):
        super().__init__()
        if len(convs) != len(LAYERS) or len(activations) != len(LAYERS):
            raise ValueError(f"TinyNet needs {len(LAYERS)} conv factories and activations")
        layers, channels = [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()], 8
        for (out, kernel, stride, depthwise), conv, activation in zip(LAYERS, convs, activations):
            layers += [conv(channels, out, kernel, stride=stride, padding=kernel // 2,
                            groups=channels if depthwise else 1, bias=False),
                       nn.BatchNorm2d(out), activation(out)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))

"""Random inputs that differ per sample as real images do: what ``verify`` feeds and the samples calibrate on.

Plain noise pools to nearly the same vector for every sample, so every attention branch (which
starts from globally pooled features) would give every sample nearly the same attention, and a
graph that mixes up the samples of a batch would pass. :func:`random_images` gives each image its
own contrast and colour shift instead.
"""

from typing import Sequence

import torch


def random_images(shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ``shape = [N, C, ...]`` float32 images that differ per sample as real images do.

    Unit Gaussian noise times a contrast drawn uniformly from [0.5, 1.5) per image, plus a shift
    drawn from N(0, 1) per image and channel. These are the images :func:`dyconv_deploy.verify.verify_onnx`
    feeds and the bundled samples calibrate their BatchNorm statistics on
    (:func:`dyconv_deploy.samples.calibrate_batch_norms`).
    """
    if len(shape) < 2:
        raise ValueError(f"random_images needs a shape [N, C, ...], got {list(shape)}")
    batch, channels, spatial = shape[0], shape[1], [1] * (len(shape) - 2)
    return (torch.randn(*shape, generator=generator) * (0.5 + torch.rand(batch, 1, *spatial, generator=generator))
            + torch.randn(batch, channels, *spatial, generator=generator))

"""Bundled sample networks (``sample:NAME`` model specs), each with its static twin.

Every architecture is written once over a conv factory (:mod:`.blocks`); ``NAME_static``
is the same network built with ``nn.Conv2d`` and no attention branches, for latency
comparisons. Samples are built deterministically (seed 0) and deploy-ready: softmax
temperatures at 1, the value the papers' 30 -> 1 annealing ends at, and BatchNorm statistics
calibrated on one random batch, as training leaves them. (With the initial statistics, mean 0
and variance 1, the signal of a freshly initialised deep net fades layer by layer and the
output no longer depends on the input, so comparing two backends on it would prove nothing.)
"""

import difflib
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.inputs import random_images
from dyconv_deploy.nn import CondConv2d, DynamicConv2d, DyNetConv2d, DyReLU, ODConv2d
from dyconv_deploy.samples.efficientnet import EfficientNetB0
from dyconv_deploy.samples.mobilenetv2 import MobileNetV2
from dyconv_deploy.samples.resnet import ResNet18
from dyconv_deploy.samples.tiny import TinyNet

IMAGENET_SHAPE = (1, 3, 224, 224)


@dataclass(frozen=True)
class PaperFigures:
    """Parameter count and multiply-adds (224x224 input) a paper reports for the network."""

    params: float
    madds: float
    source: str


@dataclass(frozen=True)
class Sample:
    """A named network: how to build it, its default input shape and the paper's figures."""

    name: str
    build: Callable[[], nn.Module]
    description: str
    input_shape: tuple[int, ...] = IMAGENET_SHAPE
    paper: Optional[PaperFigures] = None


def _relu(channels: int) -> nn.Module:
    return nn.ReLU()


_EXPERT_SPREAD = 0.1  # each expert's deviation from the shared kernel, relative to an independent draw
_GATE_BIAS = 3.0  # sigmoid(3) = 0.95: the channel, filter and spatial gates start nearly open


def _odconv_mobilenetv2() -> nn.Module:
    """ODConv-MobileNetV2 started near its static twin, so that it is well conditioned untrained.

    As initialised (independent kaiming experts, gates at sigmoid(0) = 0.5), every ODConv scales each
    image by a gain that grows with how far its pooled features are from the batch's: a peaked kernel
    softmax mixes independent experts into a larger kernel (norm ~ ||attention||_2, 0.5 to 1 for K=4)
    and spread-out sigmoid gates have a larger RMS. Compounded over 52 ODConvs this positive feedback
    makes images with a strong colour shift grow layer after layer until their attention saturates and
    switches experts chaotically (fp32 and fp64 outputs differed by 4.5 at magnitude 5), while the
    BatchNorms, calibrated on a batch dominated by those images, let the others fade (their attention
    then was the same for every image). Experts that share one kernel plus small deviations and gates
    biased open make the gain nearly independent of the attention, which still varies per image.
    """
    model = MobileNetV2(partial(ODConv2d, num_kernels=4, reduction=0.0625))
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, ODConv2d):
                shared = conv.weight.mean(0, keepdim=True)
                conv.weight.copy_(shared + _EXPERT_SPREAD * (conv.weight - shared))
                for gate in (conv.channel_fc, conv.filter_fc, conv.spatial_fc):
                    if gate is not None:
                        gate.bias.fill_(_GATE_BIAS)
    return model


def _twins(name: str, dynamic: Callable[[], nn.Module], static: Callable[[], nn.Module], description: str,
           input_shape=IMAGENET_SHAPE, paper: Optional[PaperFigures] = None,
           static_paper: Optional[PaperFigures] = None) -> list[Sample]:
    return [Sample(name, dynamic, description, input_shape, paper),
            Sample(f"{name}_static", static, f"static twin of {name} (nn.Conv2d, no attention)", input_shape,
                   static_paper)]


_DYCONV_PAPER = "Chen et al., CVPR 2020"
_ODCONV_PAPER = "Li et al., ICLR 2022 (OSVAI/ODConv README)"
_CONDCONV_PAPER = "Yang et al., NeurIPS 2019"
_MOBILENETV2_PAPER = PaperFigures(3.5e6, 300.0e6, _DYCONV_PAPER)

SAMPLES: dict[str, Sample] = {sample.name: sample for sample in [
    *_twins("dy_mobilenetv2",
            partial(MobileNetV2, partial(DynamicConv2d, num_kernels=4, reduction=4, temperature=1.0)),
            MobileNetV2,
            "DY-MobileNetV2 x1.0: DynamicConv (K=4, reduction 4) in every conv but the stem",
            paper=PaperFigures(11.1e6, 312.9e6, _DYCONV_PAPER), static_paper=_MOBILENETV2_PAPER),
    *_twins("dy_resnet18",
            partial(ResNet18, partial(DynamicConv2d, num_kernels=4, reduction=4, temperature=1.0)),
            ResNet18,
            "DY-ResNet-18: DynamicConv (K=4, reduction 4) in every residual-block conv",
            paper=PaperFigures(42.7e6, 1.85e9, _DYCONV_PAPER),
            static_paper=PaperFigures(11.1e6, 1.81e9, _DYCONV_PAPER)),
    *_twins("odconv_mobilenetv2",
            _odconv_mobilenetv2,
            MobileNetV2,
            "ODConv (4x) MobileNetV2 x1.0: ODConv (K=4, reduction 1/16) in every conv but the stem",
            paper=PaperFigures(11.51e6, 327.1e6, _ODCONV_PAPER),
            static_paper=PaperFigures(3.50e6, 300.8e6, _ODCONV_PAPER)),
    *_twins("condconv_efficientnet_b0",
            partial(EfficientNetB0, partial(CondConv2d, num_experts=8)),
            EfficientNetB0,
            "CondConv-EfficientNet-B0 (8 experts) like timm efficientnet_cc_b0_8e: CondConv in the last 3 stages",
            paper=PaperFigures(24.0e6, 413e6, _CONDCONV_PAPER),
            static_paper=PaperFigures(5.3e6, 391e6, _CONDCONV_PAPER)),
    *_twins("tiny_dynamic",
            # DynamicConv at reduction 1: the default 4 leaves 2 hidden routing units for its 8 input channels,
            # 0 after ReLU for nearly every image, so its attention was the same for every sample
            partial(TinyNet,
                    (partial(DynamicConv2d, temperature=1.0, reduction=1), CondConv2d, ODConv2d, DyNetConv2d),
                    (partial(DyReLU, mode="A"), partial(DyReLU, mode="B"), partial(DyReLU, mode="C"), _relu)),
            partial(TinyNet, (nn.Conv2d,) * 4, (_relu,) * 4),
            "tiny test network: DynamicConv, CondConv, ODConv, DyNet convs and DyReLU A/B/C",
            input_shape=(1, 3, 32, 32)),
]}


def list_samples() -> list[str]:
    """Names accepted by :func:`create_sample` (and ``sample:NAME``)."""
    return list(SAMPLES)


def get_sample(name: str) -> Sample:
    """The registry entry for ``name``; an unknown name is a :class:`DyconvError` naming the closest."""
    try:
        return SAMPLES[name]
    except KeyError:
        close = difflib.get_close_matches(name, SAMPLES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DyconvError(f"unknown sample {name!r}; {hint}known samples: {', '.join(SAMPLES)}") from None


def create_sample(name: str, state_dict: Optional[dict[str, torch.Tensor]] = None) -> nn.Module:
    """Build sample ``name`` in eval mode, with the same weights on every call (seed 0, calibrated).

    ``state_dict``: those weights, already computed (:func:`sample_state_dict`, e.g. from a cache),
    instead of calibrating them again.
    """
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; the caller's RNG is left alone
        model = get_sample(name).build()
    model.load_state_dict(sample_state_dict(name) if state_dict is None else state_dict)
    return model.eval()


def sample_sources() -> list[Path]:
    """The files whose code decides a sample's weights: the samples, the layers and the calibration inputs."""
    from dyconv_deploy import inputs, nn as layers

    return sorted([*Path(__file__).parent.glob("*.py"), *Path(layers.__file__).parent.glob("*.py"),
                   Path(inputs.__file__)])


@lru_cache(maxsize=None)
def sample_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Sample ``name``'s state dict: initialised from seed 0, BatchNorms calibrated (built once per process)."""
    sample = get_sample(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = sample.build()
    calibrate_batch_norms(model, sample.input_shape)
    return model.state_dict()


_CALIBRATION_BATCH = 16
_MIN_VARIANCE = 1e-2  # caps the gain of a channel that was (nearly) constant over the batch at 10x


def calibrate_batch_norms(model: nn.Module, input_shape: Sequence[int], batch: int = _CALIBRATION_BATCH,
                          seed: int = 0) -> nn.Module:
    """Set every BatchNorm's running statistics from one batch of ``random_images`` of ``input_shape``.

    The model runs in eval mode and each BatchNorm takes the statistics of its input just before
    normalising it, so every layer is calibrated on what it sees at inference. The images
    (:func:`dyconv_deploy.inputs.random_images`, what ``verify`` feeds too) are noise with a
    random contrast and colour shift per image, so that globally pooled features (the input of every
    attention branch) vary across the batch as they do across real images; plain noise pools to
    almost the same vector, and the tiny variance of the pooled values would blow up the attention
    of any other input. Variances are floored at ``_MIN_VARIANCE`` times the layer's median, so a
    channel that was nearly constant over the batch is not amplified.

    Args:
        input_shape: ``[N, C, H, W]`` (N is replaced by ``batch``).
    Returns:
        ``model``, calibrated, in eval mode.
    """
    def calibrate(norm: nn.Module, args: tuple) -> None:
        x = args[0]
        dims = [0, *range(2, x.dim())]
        variance = x.var(dims, unbiased=False)
        norm.running_mean.copy_(x.mean(dims))
        norm.running_var.copy_(variance.clamp(min=_MIN_VARIANCE * float(variance.median())))

    hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    images = random_images((batch, *input_shape[1:]), torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return model


def default_input_shape(name: str) -> tuple[int, ...]:
    """The input shape sample ``name`` is meant for, e.g. ``(1, 3, 32, 32)`` for ``tiny_dynamic``."""
    return get_sample(name).input_shape

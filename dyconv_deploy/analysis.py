"""Complexity of a model with dynamic convs: parameters and multiply-adds (MAdds) by role.

:func:`analyze` runs one forward pass with hooks and splits the cost of every dynamic
conv into three parts, the rest of the network being ``other``:

* **attention** — the routing branch (every ``Conv``/``Linear`` inside the layer);
* **aggregation** — mixing the experts per sample, ``sum_k A[n,k] W[k]``: ``K * |W|``
  MAdds (plus ``K * M`` for biases, ``|W|`` for ODConv's spatial scale, and the
  input-channel / filter scalings); its params are the ``K - 1`` extra experts;
* **convolution** — the conv with the mixed kernel: exactly what the static twin
  costs, and one expert's params.

MAdds count convolutions and fully connected layers, as the papers do; batch norm,
activations, pooling, softmax and residual additions are not counted. Figures are for the
whole input batch.
"""

from dataclasses import asdict, dataclass, field
from math import prod
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from dyconv_deploy.nn import DynamicConvBase


@dataclass(frozen=True)
class Cost:
    """Parameter count and multiply-adds."""

    params: int = 0
    madds: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.params + other.params, self.madds + other.madds)


@dataclass(frozen=True)
class ExpertLayout:
    """What a dynamic conv mixes per sample: enough to count its aggregation and convolution.

    ``family`` is its math (``dynamic_conv``, ``condconv``, ``odconv``, ``dynet``) and ``source``
    where its code comes from (``dyconv_deploy``, or the converter adapter, e.g. ``external_attention``).
    ``kernel_shape`` is one expert ``[M, C/G, kH, kW]``. ``spatial``, ``channel_scale`` and
    ``filter_scale`` mark ODConv's per-sample spatial, input-channel and filter attentions.
    """

    family: str
    num_kernels: int
    kernel_shape: tuple[int, int, int, int]
    bias: bool
    spatial: bool = False
    channel_scale: bool = False
    filter_scale: bool = False
    source: str = "dyconv_deploy"


@dataclass(frozen=True)
class LayerReport:
    """One dynamic conv: where it is, what it is, and its cost split by role."""

    path: str
    family: str
    source: str
    num_kernels: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    attention: Cost
    aggregation: Cost
    convolution: Cost


@dataclass(frozen=True)
class ComplexityReport:
    """Per-layer rows plus totals by role for one input shape."""

    input_shape: tuple[int, ...]
    layers: list[LayerReport] = field(default_factory=list)
    attention: Cost = Cost()
    aggregation: Cost = Cost()
    convolution: Cost = Cost()
    other: Cost = Cost()

    @property
    def total(self) -> Cost:
        return self.attention + self.aggregation + self.convolution + self.other

    def to_dict(self) -> dict:
        return {**asdict(self), "total": asdict(self.total)}


def layout_of(layer: DynamicConvBase) -> ExpertLayout:
    """The :class:`ExpertLayout` of a canonical layer, probing its routing on a tiny input."""
    probe = torch.zeros(1, layer.in_channels, *layer.kernel_size, dtype=layer.weight.dtype,
                        device=layer.weight.device)
    training = layer.training
    with torch.no_grad():
        routing = layer.eval().routing(probe)
    layer.train(training)
    return ExpertLayout(layer.family, layer.num_kernels, tuple(layer.weight.shape[1:]), layer.bias is not None,
                        routing.spatial is not None, routing.channel is not None, routing.filter is not None,
                        layer.source)


def analyze(model: nn.Module, input_shape: Sequence[int],
            layouts: Optional[Mapping[str, ExpertLayout]] = None) -> ComplexityReport:
    """Count ``model``'s params and MAdds by role for one input of ``input_shape``.

    Args:
        layouts: dynamic conv module path -> :class:`ExpertLayout`; by default every
            :class:`~dyconv_deploy.nn.DynamicConvBase` in the model (the converter passes
            foreign layers here).
    """
    modules = dict(model.named_modules())
    if layouts is None:
        layouts = {path: layout_of(m) for path, m in modules.items() if isinstance(m, DynamicConvBase)}
    owner = {id(sub): path for path in layouts for sub in modules[path].modules()}
    shapes: dict[str, tuple] = {}
    attention_madds = dict.fromkeys(layouts, 0)
    other_madds = 0

    def count_leaf(module, inputs, output):
        nonlocal other_madds
        path = owner.get(id(module))
        if path is None:
            other_madds += _leaf_madds(module, output)
        else:
            attention_madds[path] += _leaf_madds(module, output)

    def record_shapes(path):
        def hook(module, inputs, output):
            shapes.setdefault(path, (tuple(inputs[0].shape), tuple(output.shape)))
        return hook

    handles = [modules[path].register_forward_hook(record_shapes(path)) for path in layouts]
    handles += [m.register_forward_hook(count_leaf) for m in modules.values()
                if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    parameter = next(model.parameters(), None)
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0)).to(
        dtype=parameter.dtype if parameter is not None else torch.float32,
        device=parameter.device if parameter is not None else "cpu")
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()

    # A dynamic conv that did not run on this input has no shapes; it counts as "other".
    layers = [_layer_report(path, modules[path], layout, *shapes[path], attention_madds[path])
              for path, layout in layouts.items() if path in shapes]
    dynamic_params = sum(_param_count(modules[layer.path]) for layer in layers)
    return ComplexityReport(
        input_shape=tuple(input_shape),
        layers=layers,
        attention=sum((layer.attention for layer in layers), Cost()),
        aggregation=sum((layer.aggregation for layer in layers), Cost()),
        convolution=sum((layer.convolution for layer in layers), Cost()),
        other=Cost(_param_count(model) - dynamic_params, other_madds),
    )


def _layer_report(path: str, module: nn.Module, layout: ExpertLayout, input_shape: tuple, output_shape: tuple,
                  attention_madds: int) -> LayerReport:
    n = input_shape[0]
    out_channels = layout.kernel_shape[0]
    expert = prod(layout.kernel_shape) + (out_channels if layout.bias else 0)
    per_sample = layout.num_kernels * prod(layout.kernel_shape)
    per_sample += layout.num_kernels * out_channels if layout.bias else 0
    per_sample += prod(layout.kernel_shape) if layout.spatial else 0
    per_sample += prod(input_shape[1:]) if layout.channel_scale else 0
    per_sample += prod(output_shape[1:]) if layout.filter_scale else 0
    experts = layout.num_kernels * expert
    return LayerReport(
        path=path,
        family=layout.family,
        source=layout.source,
        num_kernels=layout.num_kernels,
        input_shape=input_shape,
        output_shape=output_shape,
        kernel_shape=layout.kernel_shape,
        attention=Cost(_param_count(module) - experts, attention_madds),
        aggregation=Cost(experts - expert, n * per_sample),
        convolution=Cost(expert, prod(output_shape) * prod(layout.kernel_shape[1:])),
    )


def _leaf_madds(module: nn.Module, output: torch.Tensor) -> int:
    """MAdds of a conv (any dimension) or linear layer from its output size (of the whole batch, also where it
    runs per sample under ``torch.func.vmap``, as a gate a converted loop layer runs on each sample)."""
    while torch._C._functorch.is_batchedtensor(output):
        output = torch._C._functorch.get_unwrapped(output)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return output.numel() * (module.in_channels // module.groups) * prod(module.kernel_size)


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""Recognise a dynamic conv that no adapter knows, from its ``torch.fx`` graph and one probe forward.

Independently written DynamicConv / CondConv layers differ in names and layouts but share one
structure: an attention ``a [N, K]`` computed from the input, expert kernels (parameters, in any
layout with an axis of K) mixed by it into per-sample kernels, and one convolution with the batch
folded into its groups (``x.view(1, N*C, H, W)``, ``groups = G*N``). :func:`recognise_traced`
looks for that structure in ``torch.fx.symbolic_trace(module)``:

1. the one ``conv2d`` whose weight depends on the input; its stride, padding, dilation and groups
   come from the probe forward (batch ``N`` = :data:`PROBE_BATCH`), the per-sample kernel shape
   ``[M, C/G, kH, kW]`` from its weight ``[N*M, C/G, kH, kW]``;
2. the *mixing*: an operation on the weight's path with one input computed from parameters alone
   (the experts, ``K * M * C/G * kH * kW`` elements) and one computed from the input with
   ``N * K`` elements (the attention) — ``a @ W.view(K, -1)``, ``einsum('nk,k...->n...')``,
   ``(a[..., None] * W).sum(1)``, ...;
3. the conv's bias: none, a static ``[M]`` repeated over the batch, or a ``[K, M]`` expert bias
   mixed by the attention.

The attention's own subgraph becomes the router of a :class:`RoutedConv2d` (a ``GraphModule``
over the original submodules, so the trained routing is kept as it is). Every reading of the
layouts (which axis of the experts is K, which bias) is tried on the probe and kept only when the
canonical layer reproduces the original's output; the converter then checks it again on its own
random input. A softmax attention (rows summing to 1) gives family ``dynamic_conv``, else
``condconv``. Layers that loop over the batch in Python, or that have more attentions (ODConv,
DyNet's per-channel ones), are not recognised: they need an adapter.
"""

import math
import operator
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from dyconv_deploy.convert.routed import RoutedConv2d
from dyconv_deploy.nn import Routing

FAMILY = "traced"
PROBE_BATCH = 3  # the probe's batch: > 1, so that the batch folded into conv groups can be told apart
_CONV_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


class NotRecognised(Exception):
    """The layer does not have the structure :func:`recognise_traced` looks for (the message says what)."""


class TracedRouting(nn.Module):
    """The original layer's attention subgraph: ``x [N, C, H, W] -> Routing(attention [N, K])``."""

    def __init__(self, attention: fx.GraphModule, num_kernels: int):
        super().__init__()
        self.attention = attention
        self.num_kernels = num_kernels

    def forward(self, x: Tensor) -> Routing:
        return Routing(self.attention(x).reshape(x.shape[0], self.num_kernels))


class _ShapeTracer(fx.Tracer):
    """``torch.fx``'s tracer (parameter shapes as numbers, so ``*self.weight.shape[-2:]`` traces) that also
    unpacks slices of a traced tensor's shape, ``*y.shape[-2:]`` or ``*x.size()[2:]``, taking the tensor as
    4-D where the slice does not say its length (a wrong guess fails the probe, not the conversion)."""

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def iter(self, obj: fx.Proxy):
        length = _shape_length(obj.node)
        if length is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(length)])


class _ShapeProxy(fx.Proxy):
    """A proxy whose ``len`` is known when it is a traced shape (star-unpacking asks for it first)."""

    def __len__(self):
        length = _shape_length(self.node)
        return super().__len__() if length is None else length


def _shape_length(node: fx.Node, rank: int = 4) -> Optional[int]:
    """How many sizes a ``shape`` / ``size()`` node (or a slice of one) holds, None if it is not one."""
    if (node.op == "call_function" and node.target is getattr and node.args[1] == "shape") or (
            node.op == "call_method" and node.target == "size" and len(node.args) == 1):
        return rank
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], slice):
        inner = node.args[0]
        length = _shape_length(inner, rank) if isinstance(inner, fx.Node) else None
        return None if length is None else len(range(length)[node.args[1]])
    return None


@dataclass(frozen=True)
class _FoldedConv:
    """The dynamic conv of the probe: per-sample geometry and the nodes of its weight and bias."""

    weight: fx.Node
    bias: Optional[fx.Node]
    kernel_shape: tuple  # [M, C/G, kH, kW] of one sample
    stride: tuple
    padding: object  # as the call gave it: int, pair, 'same' or 'valid'
    dilation: tuple
    groups: int  # G of one sample


def recognise_traced(module: nn.Module, x: Tensor) -> RoutedConv2d:
    """A canonical layer computing ``module`` (one input ``x [N, C, H, W]``, a probe like it is used).

    Raises:
        NotRecognised: naming what is missing (the converter reports the layer as unknown with it).
    """
    try:
        graph_module = fx.GraphModule(module, _ShapeTracer(param_shapes_constant=True).trace(module))
    except Exception as exc:  # Python control flow on the input (a loop over the batch, ...)
        raise NotRecognised(f"torch.fx cannot trace its forward, Python control flow on the input such as a loop "
                            f"over the batch? ({type(exc).__name__}: {_first_line(exc)})") from exc
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise NotRecognised(f"its forward takes {len(placeholders)} arguments, not one input")
    probe = torch.randn(PROBE_BATCH, *x.shape[1:], generator=torch.Generator().manual_seed(0)).to(x)
    values = _probe(graph_module, probe)
    from_input = _input_dependent(graph_module, placeholders[0])
    conv = _folded_conv(graph_module, values, from_input)
    with torch.no_grad():
        expected = module(probe)
    for attention, experts in _mixings(conv, values, from_input):
        num_kernels = values[attention].numel() // PROBE_BATCH
        router = TracedRouting(_subgraph(graph_module, attention), num_kernels)
        for weight in _expert_layouts(values[experts], num_kernels, conv.kernel_shape):
            for bias, output_bias in _bias_readings(conv, values, from_input, num_kernels):
                layer = _routed(router, weight, bias, output_bias, conv, _is_softmax(values[attention], num_kernels))
                if _reproduces(layer, probe, expected):
                    return layer
    raise NotRecognised("no reading of its experts (an axis of K), attention [N, K] and bias reproduces its output")


def _first_line(exc: Exception) -> str:
    """The first sentence of the message (torch.fx's go on with advice for its own users)."""
    return (str(exc).strip().splitlines() or [""])[0].split(". ")[0]


def _probe(graph_module: fx.GraphModule, x: Tensor) -> dict:
    """Every node's value in one forward of ``x``."""
    values = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            values[node] = super().run_node(node)
            return values[node]

    with torch.no_grad():
        try:
            Recorder(graph_module).run(x)
        except Exception as exc:
            raise NotRecognised(f"its traced forward fails on a batch of {PROBE_BATCH} "
                                f"({type(exc).__name__}: {_first_line(exc)})") from exc
    return values


def _input_dependent(graph_module: fx.GraphModule, placeholder: fx.Node) -> set:
    """The nodes computed from the input (its values or its shape)."""
    dependent = {placeholder}
    for node in graph_module.graph.nodes:
        if any(i in dependent for i in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _conv_call(node: fx.Node, values: dict) -> dict:
    """``F.conv2d``'s arguments by name, nodes replaced by their probe values (the nodes under ``*_node``)."""
    named = dict(zip(_CONV_ARGUMENTS, node.args))
    named.update(node.kwargs)
    call = {**_CONV_DEFAULTS, **named}
    resolved = {name: fx.node.map_arg(value, lambda n: values[n]) for name, value in call.items()}
    resolved.update({f"{name}_node": call[name] for name in ("weight", "bias")})
    return resolved


def _folded_conv(graph_module: fx.GraphModule, values: dict, from_input: set) -> _FoldedConv:
    """The one conv whose weight depends on the input, with the batch folded into its groups."""
    convs = [n for n in graph_module.graph.nodes
             if n.op == "call_function" and n.target is F.conv2d and _conv_call(n, values)["weight_node"] in from_input]
    if len(convs) != 1:
        raise NotRecognised(f"its trace has {len(convs)} conv2d calls on an input-dependent weight, not one")
    call = _conv_call(convs[0], values)
    x, weight, groups = call["input"], call["weight"], int(call["groups"])
    folded = (x.shape[0] == 1 and x.shape[1] % PROBE_BATCH == 0 and groups % PROBE_BATCH == 0
              and weight.shape[0] % PROBE_BATCH == 0)
    if not folded:
        raise NotRecognised(f"its conv does not fold the batch into groups (input {tuple(x.shape)}, groups {groups} "
                            f"at batch {PROBE_BATCH})")
    return _FoldedConv(call["weight_node"], call["bias_node"], (weight.shape[0] // PROBE_BATCH, *weight.shape[1:]),
                       _pair(call["stride"]), call["padding"], _pair(call["dilation"]), groups // PROBE_BATCH)


def _pair(value) -> tuple:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _mixings(conv: _FoldedConv, values: dict, from_input: set):
    """``(attention node, experts node)`` pairs on the weight's path, nearest the conv first."""
    per_sample = math.prod(conv.kernel_shape)
    for node in _upstream(conv.weight, within=from_input):
        inputs = [i for i in node.all_input_nodes if isinstance(values.get(i), Tensor)]
        constants = [i for i in inputs if i not in from_input and values[i].numel() % per_sample == 0]
        attentions = [i for i in inputs if i in from_input and values[i].numel() % PROBE_BATCH == 0]
        for experts in constants:
            num_kernels = values[experts].numel() // per_sample
            for attention in attentions:
                if values[attention].numel() == PROBE_BATCH * num_kernels:
                    yield attention, experts


def _upstream(node: fx.Node, within: Optional[set] = None) -> list:
    """``node`` and the nodes it is computed from, nearest first (depth first), only through ``within``."""
    order, seen, stack = [], set(), [node]
    while stack:
        current = stack.pop()
        if current in seen or (within is not None and current not in within):
            continue
        seen.add(current)
        order.append(current)
        stack.extend(current.all_input_nodes)
    return order


def _subgraph(graph_module: fx.GraphModule, output: fx.Node) -> fx.GraphModule:
    """A GraphModule computing ``output`` from the input, with only the nodes it needs."""
    needed = set(_upstream(output))
    graph, copies = fx.Graph(), {}
    for node in graph_module.graph.nodes:
        if node in needed:
            copies[node] = graph.node_copy(node, lambda n: copies[n])
    graph.output(copies[output])
    return fx.GraphModule(graph_module, graph)


def _expert_layouts(experts: Tensor, num_kernels: int, kernel_shape: tuple):
    """The experts as ``[K, M, C/G, kH, kW]``, once for each axis of size K taken as the experts' axis."""
    if experts.dim() == 1:
        yield experts.reshape(num_kernels, *kernel_shape)
        return
    for axis, size in enumerate(experts.shape):
        if size == num_kernels:
            yield experts.movedim(axis, 0).reshape(num_kernels, *kernel_shape)


def _bias_readings(conv: _FoldedConv, values: dict, from_input: set, num_kernels: int):
    """``(expert bias [K, M] or None, static output bias [M] or None)`` candidates for the conv's bias."""
    if conv.bias is None:
        yield None, None
        return
    out_channels = conv.kernel_shape[0]
    per_sample = values[conv.bias].reshape(PROBE_BATCH, out_channels)
    if torch.equal(per_sample, per_sample[:1].expand_as(per_sample)):
        yield None, per_sample[0]
    for node in _upstream(conv.bias):  # parameters mixed into the bias: [K, M] in some layout
        value = values.get(node)
        if node not in from_input and isinstance(value, Tensor) and value.numel() == num_kernels * out_channels:
            for axis, size in enumerate(value.shape):
                if size == num_kernels:
                    yield value.movedim(axis, 0).reshape(num_kernels, out_channels), None


def _is_softmax(attention: Tensor, num_kernels: int) -> bool:
    rows = attention.reshape(PROBE_BATCH, num_kernels).sum(dim=1)
    return bool(torch.allclose(rows, torch.ones_like(rows), atol=1e-4))


def _routed(router: TracedRouting, weight: Tensor, bias: Optional[Tensor], output_bias: Optional[Tensor],
            conv: _FoldedConv, softmax: bool) -> RoutedConv2d:
    return RoutedConv2d(router, weight, bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                        groups=conv.groups, output_bias=output_bias,
                        family="dynamic_conv" if softmax else "condconv")


def _reproduces(layer: RoutedConv2d, probe: Tensor, expected) -> bool:
    with torch.no_grad():
        try:
            actual = layer(probe)
        except Exception:  # a layout whose shapes do not fit: not this reading
            return False
    if not isinstance(expected, Tensor) or actual.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) or 1.0
    return bool(torch.allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale))

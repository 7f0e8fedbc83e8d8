"""Recognise a dynamic conv that no adapter knows, from its ``torch.fx`` graph and probe forwards.

Independently written DynamicConv / CondConv / ODConv / DyNet layers differ in names and layouts but
share one structure: attentions computed from the input, expert kernels (parameters, in any layout
with an axis of K) mixed by one of them into per-sample kernels, and a convolution per sample —
either one ``conv2d`` with the batch folded into its groups (``x.view(1, N*C, H, W)``,
``groups = G*N``) or one per sample in a Python loop. :func:`recognise_traced` looks for that
structure in the layer's ``torch.fx`` trace (:class:`~dyconv_deploy.convert.shape_tracer.ShapeTracer`:
a loop over the batch is unrolled by tracing the batch size as the number :data:`PROBE_BATCH`) and its
values on a probe batch:

1. the dynamic conv: the ``conv2d`` call(s) whose weight depends on the input; stride, padding,
   dilation and groups come from the probe forward, the per-sample kernels
   ``[N, M, C/G, kH, kW]`` from their weights;
2. the *weight reading*: experts (a parameter-only tensor of ``K * M * C/G * kH * kW`` elements,
   or K parameters of one kernel each, stacked) and input-dependent tensors of the batch computed
   before them — the attention ``[N, K]`` or a per-output-channel ``[N, K, M]`` / ``[N, M, K]``,
   optionally ODConv's spatial ``[N, kH, kW]``, input-channel ``[N, C]`` and filter ``[N, M]``
   factors — such that their product reproduces every sample's kernel exactly;
3. the scales outside the weight: an ``[N, C]`` tensor multiplied into the conv's input (ODConv's
   channel attention) and an ``[N, M]`` one into its output (the filter attention);
4. the conv's bias: none, a static ``[M]`` shared by the batch, or a ``[K, M]`` expert bias.

A layer with no conv on an input-dependent weight may be written experts-first: K static convs of one
geometry on its input (or one of K * M filters) whose outputs an attention mixes; it is read as the dynamic
conv of those kernels (:func:`_read_expert_outputs`).
Other tensor inputs of the layer (routing weights its parent computes once for several convs) are
inputs of the router.
A block that goes on after its conv (BatchNorm, activation, a residual sum) becomes its own graph
with the node the conv's result reaches replaced by the canonical layer.
The attentions' own subgraph becomes the router of a :class:`RoutedConv2d` (a ``GraphModule`` over
the original submodules, so the trained routing is kept as it is). A reading is kept only when the
canonical layer reproduces the original's output on the probe and on a second batch of another
size (so no batch size is baked into the router); the converter then checks it again on its own
random input. The family follows the math found: ``odconv`` with any of the three extra factors,
``dynet`` with a per-channel attention, ``dynamic_conv`` with a softmax one (rows summing to 1),
else ``condconv``. Attentions computed inside a loop over the batch, one sample at a time, are read after
:func:`~dyconv_deploy.convert.sample_batching.batch_sample_branches` has batched their branches.
"""

import contextlib
import io
import itertools
import math
import operator
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from dyconv_deploy.convert.graph_nodes import downstream, reshapes, same_tensor, upstream
from dyconv_deploy.convert.routed import RoutedConv2d
from dyconv_deploy.convert.sample_batching import (PARAMETERS_OUTSIDE, batch_sample_branches, changed_in_place,
                                                  is_impure)
from dyconv_deploy.convert.shape_tracer import ShapeTracer, read_batch_sizes
from dyconv_deploy.nn import Routing

FAMILY = "traced"
GUESSED_RANKS = (4, 5, 3, 6)  # ranks tried for a tensor whose shape is star-unpacked without saying its length
PROBE_BATCH = 3  # the probe's batch: > 1, so that the batch folded into conv groups can be told apart
CHECK_BATCH = 5  # a second batch the canonical layer must reproduce: no probe batch baked into its router
_CONV_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_MULTIPLY = (operator.mul, torch.mul)


class NotRecognised(Exception):
    """The layer does not have the structure :func:`recognise_traced` looks for (the message says what)."""


@dataclass(frozen=True)
class _Field:
    """An input-dependent tensor of the trace read as one field of :class:`Routing`.

    ``shape`` is its per-sample shape in the order the original computes it; ``channel_major``
    marks an ``[N, M, K]`` attention, moved to the contract's ``[N, K, M]``. Without a node, the field is
    the attention of a single expert that the layer does not compute (OSVAI's ``kernel_num=1``): ones.
    """

    role: str  # 'attention', 'spatial', 'channel' or 'filter'
    node: Optional[fx.Node]
    shape: tuple
    channel_major: bool = False

    def read(self, value: Tensor) -> Tensor:
        """The node's value ``[N, ...]`` in the contract's layout for ``role``."""
        field = value.reshape(value.shape[0], *self.shape)
        return field.transpose(1, 2) if self.channel_major else field

    def probe_value(self, values: dict) -> Tensor:
        """The field on the probe batch, in the contract's layout."""
        if self.node is not None:
            return self.read(values[self.node])
        image = next(v for n, v in values.items() if n.op == "placeholder")
        return image.new_ones(PROBE_BATCH, 1)


class TracedRouting(nn.Module):
    """The original layer's attention subgraph, ``x [N, C, H, W]`` (and the layer's other inputs, such as
    routing weights its parent computes, ``[N, ...]`` of ``routing_shapes``) ``-> Routing``: one output per field."""

    def __init__(self, attentions: fx.GraphModule, fields: tuple[_Field, ...], routing_shapes: tuple = ()):
        super().__init__()
        self.attentions = attentions
        self.fields = fields
        self.routing_shapes = routing_shapes

    def forward(self, x: Tensor, *routing_inputs: Tensor) -> Routing:
        # forward itself: a GraphModule's __call__ formats a failing call's message by importing torch._dynamo
        # (1.4 s), and readings that do not fit the check batch fail here by design
        values = iter(self.attentions.forward(x, *routing_inputs))
        ones = torch.ones_like(x[:, :1, 0, 0])  # [N, 1], the batch traced as the input's (dynamic in exports)
        return Routing(**{field.role: field.read(next(values)) if field.node is not None else ones
                          for field in self.fields})

    def probe_arguments(self, x: Tensor) -> tuple:
        """Stand-ins for the other inputs, for layout probes that call the routing with ``x`` alone."""
        return tuple(torch.rand(x.shape[0], *shape, dtype=x.dtype, device=x.device) for shape in self.routing_shapes)


@dataclass(frozen=True)
class _DynamicConv:
    """The layer's dynamic conv on the probe: one call with the batch folded into its groups, or one per sample."""

    calls: tuple[fx.Node, ...]
    weights: tuple[fx.Node, ...]
    biases: tuple[Optional[fx.Node], ...]
    inputs: tuple[fx.Node, ...]
    kernel_shape: tuple  # [M, C/G, kH, kW] of one sample
    stride: tuple
    padding: object  # as the call gave it: int, pair, 'same' or 'valid'
    dilation: tuple
    groups: int  # G of one sample

    @property
    def out_channels(self) -> int:
        return self.kernel_shape[0]

    def sample_kernels(self, values: dict) -> Tensor:
        """Every probe sample's kernel ``[N, M, C/G, kH, kW]``."""
        return torch.stack([values[w] for w in self.weights]).reshape(PROBE_BATCH, *self.kernel_shape)

    def sample_biases(self, values: dict) -> Optional[Tensor]:
        """Every probe sample's bias ``[N, M]``, or None without one."""
        if any(b is None for b in self.biases):
            return None
        return torch.stack([values[b] for b in self.biases]).reshape(PROBE_BATCH, self.out_channels)


def recognise_traced(module: nn.Module, x: Tensor, *routing_inputs: Tensor) -> nn.Module:
    """A canonical layer computing ``module`` (input ``x [N, C, H, W]``, a probe like it is used, and any other
    inputs ``[N, ...]`` it takes, such as routing weights from its parent; values do not matter): a
    :class:`RoutedConv2d`, or, for a block that goes on after its conv (a BatchNorm, an activation, ...), a
    ``GraphModule`` of the block's own graph with the dynamic conv computed by one.

    Raises:
        NotRecognised: naming what is missing (the converter reports the layer as unknown with it).
    """
    if module.training:
        raise NotRecognised("it is in training mode (BatchNorm statistics would change); call .eval() first")
    first_failure = None
    for rank in GUESSED_RANKS:
        example = tuple(torch.randn(PROBE_BATCH, *t.shape[1:]).to(t) for t in (x, *routing_inputs))
        tracers = [ShapeTracer(None, rank), ShapeTracer(PROBE_BATCH, rank, example)]
        try:
            return _recognise(module, *_trace(module, tracers), x, routing_inputs)
        except NotRecognised as exc:
            failure = exc
        except Exception as exc:  # a layer unlike any reading breaks one of them: say so, not a traceback
            failure = NotRecognised(f"reading its trace failed ({type(exc).__name__}: {_first_line(exc)})")
            failure.__cause__ = exc
        first_failure = first_failure or failure
        if not any(t.guessed for t in tracers):  # another rank would trace the same graph
            break
    raise first_failure


def _recognise(module: nn.Module, graph_module: fx.GraphModule, unrolled: bool, x: Tensor,
               routing_inputs: tuple) -> nn.Module:
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1 + len(routing_inputs):
        raise NotRecognised(f"its forward takes {len(placeholders)} arguments, not the {1 + len(routing_inputs)} "
                            f"it was called with")
    probe, check = (tuple(torch.randn(batch, *t.shape[1:], generator=torch.Generator().manual_seed(seed)).to(t)
                          for t in (x, *routing_inputs)) for seed, batch in enumerate((PROBE_BATCH, CHECK_BATCH)))
    values = _probe(graph_module, probe)
    from_input = downstream(graph_module.graph.nodes, placeholders)
    routing_shapes = tuple(tuple(t.shape[1:]) for t in routing_inputs)
    if not any(_is_dynamic_conv(n, values, from_input) for n in graph_module.graph.nodes):
        return _read_expert_outputs(graph_module, values, from_input, probe, lambda: _expected_outputs(module, probe, check),
                                    routing_shapes)
    conv = _dynamic_conv(graph_module, values, from_input, unrolled)
    expected = _expected_outputs(module, probe, check)
    try:
        return _read(graph_module, conv, values, from_input, probe, expected, routing_shapes)
    except NotRecognised as failure:
        joins = set()
        results = _sample_results(graph_module, conv, values, from_input, joins) if unrolled else None
        if results is None:
            raise
        # attentions computed inside the loop over the samples: their branches batched, then read again
        for parameters_outside in PARAMETERS_OUTSIDE:
            rewritten = batch_sample_branches(graph_module, results, set(conv.calls), values, from_input - joins,
                                              conv.out_channels, math.prod(conv.kernel_shape) - 1,
                                              _free_name(graph_module, "sample_attentions"), parameters_outside)
            if rewritten is None:
                continue
            with contextlib.suppress(NotRecognised):  # a branch vmap cannot run, or no reading of this one
                rewritten_values = _probe(rewritten, probe)
                rewritten_from_input = downstream(rewritten.graph.nodes, [n for n in rewritten.graph.nodes
                                                               if n.op == "placeholder"])
                return _read(rewritten, _dynamic_conv(rewritten, rewritten_values, rewritten_from_input, unrolled),
                             rewritten_values, rewritten_from_input, probe, expected, routing_shapes)
        raise failure


def _expected_outputs(module: nn.Module, *batches: tuple) -> list:
    """``(inputs, module(*inputs))`` for each of the ``batches``: what a reading must reproduce."""
    with torch.no_grad():
        try:
            return [(inputs, module(*inputs)) for inputs in batches]
        except Exception as exc:
            raise NotRecognised(f"it fails on a random batch of {CHECK_BATCH} ({type(exc).__name__}: "
                                f"{_first_line(exc)})") from exc


def _sample_results(graph_module: fx.GraphModule, conv: _DynamicConv, values: dict, from_input: set,
                    joins: set) -> Optional[list]:
    """Each probe sample's own results, the nodes its branch of the layer ends in: in a loop over the batch, the
    inputs of the op joining the convs' results (``torch.cat(outputs)``), else the convs themselves, and the
    sample's kernel where the kernels were joined before the loop took them apart again (``joins`` gains those
    joining nodes, which are no sample's own); for the batch-folded conv, the :data:`PROBE_BATCH` pieces joined
    into its weight and input. None if not found."""
    if len(conv.calls) == PROBE_BATCH:
        after = [downstream(graph_module.graph.nodes, [call]) for call in conv.calls]
        join = next((n for n in graph_module.graph.nodes if sum(n in nodes for nodes in after) > 1), None)
        parts = [[i for i in join.all_input_nodes if i in nodes] for nodes in after] if join is not None else []
        results = parts if parts and all(len(p) == 1 for p in parts) else [[call] for call in conv.calls]
        for sample, weight in enumerate(conv.weights):  # kernels made in a loop of their own, stacked: kernels[i]
            joined = _joined_piece(weight, sample, values, from_input)
            if joined is not None:
                results[sample].append(joined[1])
                joins.add(joined[0])
        return results
    pieces = [_joined_pieces(node, values, from_input) for node in (conv.weights[0], conv.inputs[0])]
    pieces = [p for p in pieces if p is not None]
    return [list(sample) for sample in zip(*pieces)] if pieces else None


def _joined_piece(node: fx.Node, sample: int, values: dict, from_input: set) -> Optional[tuple]:
    """``(joined, piece)``: the tensor of sample ``sample`` that was joined (``torch.stack``) with the other
    samples' into the tensor ``node`` is a slice of (``kernels[i]``), or None."""
    for joined in upstream([node], within=from_input)[1:]:
        parts = [n for n in joined.all_input_nodes if n in from_input]
        if len(parts) == PROBE_BATCH:
            piece = values[parts[sample]]
            if isinstance(piece, Tensor) and piece.shape == values[node].shape and torch.equal(piece, values[node]):
                return joined, parts[sample]
    return None


def _joined_pieces(node: fx.Node, values: dict, from_input: set) -> Optional[list]:
    """The :data:`PROBE_BATCH` tensors, one per sample, joined (``torch.cat``) into ``node``'s value, nearest first."""
    per_sample = values[node].numel() // PROBE_BATCH
    for joined in upstream([node], within=from_input):
        parts = [n for n in joined.all_input_nodes if n in from_input]
        if len(parts) == PROBE_BATCH and all(isinstance(values[n], Tensor) and values[n].numel() == per_sample
                                             for n in parts):
            return parts
    return None


def _read(graph_module: fx.GraphModule, conv: _DynamicConv, values: dict, from_input: set, probe: tuple,
          expected: list, routing_shapes: tuple) -> nn.Module:
    """The first reading of the layer's dynamic conv (a :class:`RoutedConv2d`, else a block with one) that
    reproduces every ``(inputs, output)`` of ``expected``."""
    weight_readings = list(_weight_readings(graph_module, conv, values, from_input))
    return _first_reproducing(graph_module, conv, values, probe, expected, lambda most_scales_first: _readings(
        graph_module, conv, values, from_input, weight_readings, routing_shapes, most_scales_first))


def _first_reproducing(graph_module: fx.GraphModule, conv: _DynamicConv, values: dict, probe: tuple,
                       expected: list, readings) -> nn.Module:
    """The first layer of ``readings(most_scales_first)`` that reproduces every ``(inputs, output)`` of
    ``expected``, else the first block with one in place of the conv's result that does."""
    for layer in readings(False):
        if all(_reproduces(layer, inputs, output) for inputs, output in expected):
            return layer
    # A block going on after the conv: the scales that multiply its output are taken into the layer first
    # (they multiply the conv's result as much as the rest of the block's ops).
    name = _free_name(graph_module, "dynamic_conv")
    for layer in readings(True):
        for block in _blocks(graph_module, conv, values, layer, probe, name):
            if all(_reproduces(block, inputs, output) for inputs, output in expected):
                return block
    raise NotRecognised("no reading of its experts (an axis of K), attentions and bias reproduces its output")


def _readings(graph_module: fx.GraphModule, conv: _DynamicConv, values: dict, from_input: set,
              weight_readings: list, routing_shapes: tuple, most_scales_first: bool = False) -> Iterator[RoutedConv2d]:
    """Canonical layers for every reading of the kernels (``weight_readings``), the scales outside them and the
    bias; a reading the canonical layer cannot take (a geometry it refuses) is left out."""
    for weight, fields in weight_readings:
        scale_choices = list(_input_output_scales(graph_module, conv, values, from_input, {f.role for f in fields}))
        for scales in sorted(scale_choices, key=len, reverse=True) if most_scales_first else scale_choices:
            fields_found = (*fields, *scales)
            router = TracedRouting(_subgraph(graph_module, [f.node for f in fields_found if f.node is not None]),
                                   fields_found, routing_shapes)
            for bias, output_bias in _bias_readings(conv, values, from_input, len(weight)):
                try:
                    layer = _routed(router, weight, bias, output_bias, conv, values)
                except ValueError:
                    continue
                yield layer


def _trace(module: nn.Module, tracers: list[ShapeTracer]) -> tuple[fx.GraphModule, bool]:
    """The layer's graph by the first of ``tracers`` that traces it: for any batch, else with the batch size as
    a number (a loop over it unrolled); and whether it was the latter."""
    failures = []
    for tracer in tracers:
        try:
            return fx.GraphModule(module, tracer.trace(module)), tracer.batch is not None
        except Exception as exc:  # Python control flow on the input: a loop over the batch, ...
            failures.append(exc)
    failure = failures[-1]  # the trace that got furthest
    raise NotRecognised(f"torch.fx cannot trace its forward, even with the batch size as a number: Python control "
                        f"flow on the input's values? ({type(failure).__name__}: {_first_line(failure)})") from failure


def _first_line(exc: Exception) -> str:
    """The first sentence of the message (torch.fx's go on with advice for its own users)."""
    return (str(exc).strip().splitlines() or [""])[0].split(". ")[0]


def _probe(graph_module: fx.GraphModule, inputs: tuple) -> dict:
    """Every node's value in one forward of ``inputs`` (as it was then: copies, where an op changes one in
    place later, ``y.relu_()``)."""
    values = {}
    copied = any(changed_in_place(n) is not None for n in graph_module.graph.nodes)

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            values[node] = value.clone() if copied and isinstance(value, Tensor) else value
            return value

    with torch.no_grad():
        try:
            Recorder(graph_module).run(*inputs)
        except Exception as exc:
            raise NotRecognised(f"its traced forward fails on a batch of {PROBE_BATCH} "
                                f"({type(exc).__name__}: {_first_line(exc)})") from exc
    return values


def _conv_call(node: fx.Node, values: dict) -> dict:
    """``F.conv2d``'s arguments by name, nodes replaced by their probe values (the nodes under ``*_node``)."""
    named = dict(zip(_CONV_ARGUMENTS, node.args))
    named.update(node.kwargs)
    call = {**_CONV_DEFAULTS, **named}
    resolved = {name: fx.node.map_arg(value, lambda n: values[n]) for name, value in call.items()}
    resolved.update({f"{name}_node": call[name] for name in ("input", "weight", "bias")})
    return resolved


def _dynamic_conv(graph_module: fx.GraphModule, values: dict, from_input: set, unrolled: bool) -> _DynamicConv:
    """The conv(s) whose weight depends on the input: one with the batch folded into its groups, or (in a trace
    that ``unrolled`` a loop over the batch) one per sample."""
    nodes = [n for n in graph_module.graph.nodes if _is_dynamic_conv(n, values, from_input)]
    calls = [_conv_call(n, values) for n in nodes]
    if len(calls) == 1:
        x, weight, groups = calls[0]["input"], calls[0]["weight"], int(calls[0]["groups"])
        if not (x.shape[0] == 1 and x.shape[1] % PROBE_BATCH == 0 and groups % PROBE_BATCH == 0
                and weight.shape[0] % PROBE_BATCH == 0):
            raise NotRecognised(f"its conv does not fold the batch into groups (input {tuple(x.shape)}, groups "
                                f"{groups} at batch {PROBE_BATCH}) nor runs once per sample")
        kernel_shape, groups = (weight.shape[0] // PROBE_BATCH, *weight.shape[1:]), groups // PROBE_BATCH
    elif unrolled and len(calls) == PROBE_BATCH:
        geometry = {(c["weight"].shape, str(c["stride"]), str(c["padding"]), str(c["dilation"]), int(c["groups"]),
                     c["input"].shape) for c in calls}
        one_sample = calls[0]["input"].dim() == 3 or calls[0]["input"].shape[0] == 1  # [C, H, W] or [1, C, H, W]
        if len(geometry) != 1 or not one_sample:
            raise NotRecognised(f"its {len(calls)} convs in a loop over the batch differ in geometry or do not take "
                                f"one sample each (inputs {sorted({tuple(c['input'].shape) for c in calls})})")
        kernel_shape, groups = tuple(calls[0]["weight"].shape), int(calls[0]["groups"])
    else:
        raise NotRecognised(f"its trace has {len(calls)} conv2d calls on an input-dependent weight at batch "
                            f"{PROBE_BATCH}, neither one nor one per sample")
    first = calls[0]
    return _DynamicConv(tuple(nodes), tuple(c["weight_node"] for c in calls), tuple(c["bias_node"] for c in calls),
                        tuple(c["input_node"] for c in calls), tuple(kernel_shape), _pair(first["stride"]),
                        _padding(first["padding"]), _pair(first["dilation"]), groups)


def _is_dynamic_conv(node: fx.Node, values: dict, from_input: set) -> bool:
    """A ``conv2d`` call on an input-dependent weight."""
    return (node.op == "call_function" and node.target is F.conv2d
            and _conv_call(node, values)["weight_node"] in from_input)


def _read_expert_outputs(graph_module: fx.GraphModule, values: dict, from_input: set, probe: tuple,
                         expected: Callable[[], list], routing_shapes: tuple) -> nn.Module:
    """A layer written experts-first: static expert convs on its input (K convs of one geometry, or one of
    K * M filters), their outputs mixed by an attention (``sum(a[:, k] * conv_k(x))``, DyNet's per-channel
    ``[N, K, M]`` too): a reading of the experts' kernels, biases and attention that reproduces it. Of K + 1
    convs of one geometry, each may be left out (a static branch beside the mixture, a conv of the router's).
    ``expected()`` gives the original's ``(inputs, output)`` pairs, asked for only where a reading is found."""
    image = next(n for n in graph_module.graph.nodes if n.op == "placeholder")
    groups: dict[tuple, list] = {}
    for node in graph_module.graph.nodes:
        conv = _static_conv(graph_module, node, values, from_input)
        if conv is not None and (conv["input_node"] is image or same_tensor(values[conv["input_node"]], values[image])):
            key = (conv["input_node"], tuple(conv["weight"].shape), str(conv["stride"]), str(conv["padding"]),
                   str(conv["dilation"]), int(conv["groups"]), conv["bias"] is None)  # (x.contiguous() is x)
            groups.setdefault(key, []).append((node, conv))
    for members in sorted(groups.values(), key=len, reverse=True):
        choices = [members] + ([members[:i] + members[i + 1:] for i in range(len(members))] if len(members) > 2
                               else [])
        for chosen in choices:
            nodes, calls = [m[0] for m in chosen], [m[1] for m in chosen]
            first = calls[0]
            weight = torch.stack([c["weight"] for c in calls])  # [K, M, C/G, kH, kW], or [1, K*M, ...] to split
            bias = None if first["bias"] is None else torch.stack([c["bias"] for c in calls])
            experts = _DynamicConv(tuple(nodes), (), (), (image,), tuple(first["weight"].shape),
                                   _pair(first["stride"]), _padding(first["padding"]), _pair(first["dilation"]),
                                   int(first["groups"]))
            after = downstream(graph_module.graph.nodes, nodes)
            batched = _distinct([n for n in graph_module.graph.nodes if n in from_input and n not in after
                                 and n is not image and _batched(values[n])], values)
            biases = [bias] if bias is not None else [None, *_added_biases(graph_module, after, values, len(nodes),
                                                                              first["weight"].shape[0])]
            layers = [layer for bias in biases
                      for layer in _expert_readings(experts, weight, bias, batched, values, graph_module,
                                                    routing_shapes)]
            if layers:
                with contextlib.suppress(NotRecognised):
                    return _first_reproducing(graph_module, experts, values, probe, expected(), lambda _: layers)
    raise NotRecognised("it has no conv on an input-dependent weight, nor static expert convs whose outputs it "
                        "mixes by an attention")


def _added_biases(graph_module: fx.GraphModule, after: set, values: dict, num_kernels: int,
                  out_channels: int) -> list:
    """``[K, M]`` expert biases added to bias-free expert convs' outputs before the mix (``a_k * (conv_k(x) +
    b_k)``): K parameters of ``[M]`` that ops after the convs read, in the order the forward reads them."""
    read_after = set(upstream(after))
    singles = [n for n in graph_module.graph.nodes if n.op == "get_attr" and n in read_after
               and isinstance(values.get(n), Tensor) and values[n].numel() == out_channels]
    return [torch.stack([values[n].reshape(-1) for n in singles])] if len(singles) == num_kernels > 1 else []


def _static_conv(graph_module: fx.GraphModule, node: fx.Node, values: dict, from_input: set) -> Optional[dict]:
    """``F.conv2d``'s arguments (as :func:`_conv_call` gives them) of a conv with a constant weight: an
    ``nn.Conv2d`` (zero padding) or ``F.conv2d`` on a parameter; None for any other node."""
    if node.op == "call_module":
        conv = graph_module.get_submodule(node.target)
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or len(node.args) != 1:
            return None
        return {"input": values[node.args[0]], "input_node": node.args[0], "weight": conv.weight.detach(),
                "bias": None if conv.bias is None else conv.bias.detach(), "stride": conv.stride,
                "padding": conv.padding, "dilation": conv.dilation, "groups": conv.groups}
    if node.op == "call_function" and node.target is F.conv2d:
        call = _conv_call(node, values)
        if call["weight_node"] not in from_input and not (isinstance(call["bias_node"], fx.Node)
                                                          and call["bias_node"] in from_input):
            return call
    return None


def _expert_readings(experts: _DynamicConv, weight: Tensor, bias: Optional[Tensor], batched: list, values: dict,
                     graph_module: fx.GraphModule, routing_shapes: tuple) -> Iterator[RoutedConv2d]:
    """Canonical layers mixing the expert convs' kernels ``weight [K, M, C/G, kH, kW]`` (one conv's ``K * M``
    filters split expert-major or channel-major) by each attention found among the ``batched`` tensors."""
    layouts = [(weight, bias)] if len(weight) > 1 else []
    if len(weight) == 1:  # one conv of K * M filters
        filters = weight.shape[1]
        for num_kernels in (k for k in range(2, filters + 1) if filters % k == 0):
            m = filters // num_kernels
            split = weight[0].reshape(num_kernels, m, *weight.shape[2:])
            by_channel = weight[0].reshape(m, num_kernels, *weight.shape[2:]).transpose(0, 1)
            layouts += [(split, None if bias is None else bias[0].reshape(num_kernels, m)),
                        (by_channel, None if bias is None else bias[0].reshape(m, num_kernels).T)]
    for kernels, biases in layouts:
        for attention in _attention_fields(batched, values, len(kernels), kernels.shape[1]):
            if attention.node is None:
                continue
            router = TracedRouting(_subgraph(graph_module, [attention.node]), (attention,), routing_shapes)
            try:
                yield _routed(router, kernels.contiguous(), None if biases is None else biases.contiguous(), None,
                              replace(experts, kernel_shape=tuple(kernels.shape[1:])), values)
            except ValueError:
                continue


def _padding(value):
    """``F.conv2d``'s padding as the canonical layer takes it: a one-element sequence as its number."""
    return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value


def _pair(value) -> tuple:
    """``F.conv2d``'s int, one-element or two-element stride / dilation as a pair."""
    values = [int(value)] if isinstance(value, int) else [int(v) for v in value]
    return tuple(values * 2) if len(values) == 1 else tuple(values)


def _batched(value) -> bool:
    """A floating-point tensor with the probe batch as its first axis (an attention, a scale)."""
    return (isinstance(value, Tensor) and value.is_floating_point() and value.dim() >= 1
            and value.shape[0] == PROBE_BATCH)


def _weight_readings(graph_module: fx.GraphModule, conv: _DynamicConv, values: dict,
                     from_input: set) -> Iterator[tuple[Tensor, tuple[_Field, ...]]]:
    """``(experts [K, M, C/G, kH, kW], fields)`` whose product reproduces every probe sample's kernel."""
    kernels = conv.sample_kernels(values)
    entries = _Entries.of(kernels.shape)
    observed = entries.take(kernels)
    kernels_from = upstream(conv.weights)
    for expert_nodes, experts in _expert_candidates(kernels_from, values, from_input, math.prod(conv.kernel_shape)):
        num_kernels = experts.numel() // math.prod(conv.kernel_shape)
        after_experts = downstream(graph_module.graph.nodes, expert_nodes)
        batched = _distinct([n for n in kernels_from if n in from_input and n not in after_experts
                             and _batched(values[n])], values)
        for weight in _expert_layouts(experts, num_kernels, conv.kernel_shape):
            for attention in _attention_fields(batched, values, num_kernels, conv.out_channels):
                mixed = _mix(attention.probe_value(values), weight)
                mixed_entries = entries.take(mixed)
                others = [n for n in batched if n is not attention.node]
                for factors in _weight_factors(others, values, conv):
                    if (_close(entries.scaled(mixed_entries, factors, values, conv.groups), observed)  # screened
                            and _close(_scaled(mixed, factors, values, conv.groups), kernels)):
                        yield weight, (attention, *factors)


@dataclass(frozen=True)
class _Entries:
    """A fixed sample of entries of the per-sample kernels ``[N, M, C/G, kH, kW]`` (their flat positions and
    their indices along each axis), on which a reading is screened before the whole kernels are compared."""

    shape: torch.Size
    flat: Tensor
    index: tuple[Tensor, ...]

    @classmethod
    def of(cls, shape: torch.Size, count: int = 2048) -> "_Entries":
        total = math.prod(shape)
        flat = (torch.randperm(total, generator=torch.Generator().manual_seed(0))[:count] if total > count
                else torch.arange(total))
        return cls(shape, flat, torch.unravel_index(flat, tuple(shape)))

    def take(self, kernels: Tensor) -> Tensor:
        return kernels.reshape(-1)[self.flat]

    def scaled(self, mixed: Tensor, factors: tuple[_Field, ...], values: dict, groups: int) -> Tensor:
        """:func:`_scaled` at the sampled entries (``mixed``: the mixed kernels' values there)."""
        for factor in factors:
            mixed = mixed * _broadcast(factor, values, self.shape, groups).expand(self.shape)[self.index]
        return mixed


def _distinct(nodes: list, values: dict) -> list:
    """``nodes`` without those whose value is a view of an earlier one's (the same numbers, reshaped; a tensor
    changed in place is read with its changes: see :func:`_subgraph`)."""
    seen, kept = set(), []
    for node in nodes:
        key = (values[node].data_ptr(), values[node].numel())
        if key not in seen:
            seen.add(key)
            kept.append(node)
    return kept


def _expert_candidates(kernels_from: list, values: dict, from_input: set, per_sample: int):
    """``(nodes, experts)``: parameter-only tensors of ``K * per_sample`` elements on the kernels' path,
    nearest first, then the parameters of one kernel each, stacked in the order the trace uses them."""
    constants = [n for n in kernels_from if n not in from_input and isinstance(values.get(n), Tensor)]
    for node in _distinct([n for n in constants if values[n].numel() % per_sample == 0], values):
        yield [node], values[node]
    singles = _in_graph_order([n for n in constants if n.op == "get_attr" and values[n].numel() == per_sample])
    if len(singles) > 1:
        yield singles, torch.stack([values[n].reshape(-1) for n in singles])


def _in_graph_order(nodes: list) -> list:
    """``nodes`` (of one graph) in the order the trace made them: parameters in the order the forward uses them."""
    if not nodes:
        return []
    order = {n: i for i, n in enumerate(nodes[0].graph.nodes)}
    return sorted(nodes, key=order.__getitem__)


def _expert_layouts(experts: Tensor, num_kernels: int, kernel_shape: tuple):
    """The experts as ``[K, M, C/G, kH, kW]``: K the leading axis of the flattened tensor, then each axis of
    size K taken as the experts' axis."""
    yield experts.reshape(num_kernels, *kernel_shape)
    for axis, size in enumerate(experts.shape):
        if size == num_kernels and axis > 0:
            yield experts.movedim(axis, 0).reshape(num_kernels, *kernel_shape)


def _attention_fields(batched: list, values: dict, num_kernels: int, out_channels: int) -> Iterator[_Field]:
    """Readings of batched tensors as the attention: ``[N, K]``, or per output channel ``[N, K, M]`` / ``[N, M, K]``."""
    for node in batched:
        per_sample = values[node].numel() // PROBE_BATCH
        if per_sample == num_kernels:
            yield _Field("attention", node, (num_kernels,))
        elif per_sample == num_kernels * out_channels and out_channels > 1:
            yield _Field("attention", node, (num_kernels, out_channels))
            yield _Field("attention", node, (out_channels, num_kernels), channel_major=True)
    if num_kernels == 1:  # one expert scaled only by ODConv's factors
        yield _Field("attention", None, (1,))


def _mix(attention: Tensor, weight: Tensor) -> Tensor:
    """Per-sample kernels ``[N, M, C/G, kH, kW]`` from the attention ``[N, K]`` / ``[N, K, M]``."""
    if attention.dim() == 2:
        return torch.einsum("nk,kmcij->nmcij", attention, weight)
    return torch.einsum("nkm,kmcij->nmcij", attention, weight)


def _weight_factors(batched: list, values: dict, conv: _DynamicConv) -> Iterator[tuple[_Field, ...]]:
    """Choices of ODConv factors multiplied into the kernels, none first: spatial ``[N, kH, kW]``, input
    channel ``[N, C]`` (group g's kernels scaled by its C/G channels, as the input's would be) and filter ``[N, M]``
    (a 1x1 kernel's spatial factor is a number per sample)."""
    m, c_per_group, kh, kw = conv.kernel_shape
    shapes = {"spatial": (kh, kw), "filter": (m,), "channel": (c_per_group * conv.groups,)}
    options = []
    for role, shape in shapes.items():
        found = [_Field(role, n, shape) for n in batched if values[n].numel() == PROBE_BATCH * math.prod(shape)]
        options.append([None, *found])
    for choice in itertools.product(*options):
        yield tuple(f for f in choice if f is not None)


def _scaled(kernels: Tensor, factors: tuple[_Field, ...], values: dict, groups: int) -> Tensor:
    """``kernels [N, M, C/G, kH, kW]`` times each factor."""
    for factor in factors:
        kernels = kernels * _broadcast(factor, values, kernels.shape, groups)
    return kernels


def _broadcast(factor: _Field, values: dict, shape: torch.Size, groups: int) -> Tensor:
    """An ODConv factor's probe value broadcastable to the kernels ``[N, M, C/G, kH, kW]``: the channel factor
    ``[N, C]`` by group (group g's M/G kernels times its C/G channels)."""
    n, m, c_per_group = shape[:3]
    field = factor.read(values[factor.node])
    if factor.role == "spatial":
        return field[:, None, None]
    if factor.role == "filter":
        return field[:, :, None, None, None]
    by_group = field.reshape(n, groups, 1, c_per_group).expand(n, groups, m // groups, c_per_group)
    return by_group.reshape(n, m, c_per_group, 1, 1)


def _close(actual: Tensor, expected: Tensor) -> bool:
    scale = float(expected.abs().max()) or 1.0
    return actual.shape == expected.shape and bool(torch.allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale))


def _input_output_scales(graph_module: fx.GraphModule, conv: _DynamicConv, values: dict, from_input: set,
                         used: set) -> Iterator[tuple[_Field, ...]]:
    """Choices of scales outside the kernels, none first: an ``[N, C]`` tensor multiplying the conv's input
    (ODConv's channel attention) and an ``[N, M]`` one multiplying its output (the filter attention)."""
    after_conv = downstream(graph_module.graph.nodes, conv.calls)
    image = next(n for n in graph_module.graph.nodes if n.op == "placeholder")
    sides = {"channel": (upstream(conv.inputs, within=from_input), values[image].shape[1]),
             "filter": ([n for n in graph_module.graph.nodes if n in after_conv], conv.out_channels)}
    options = []
    for role, (path, size) in sides.items():
        found = [] if role in used else [_Field(role, n, (size,)) for n in _multipliers(path, values, size, after_conv)]
        options.append([None, *found])
    for choice in itertools.product(*options):
        yield tuple(f for f in choice if f is not None)


def _multipliers(path: list, values: dict, size: int, excluded: set) -> list:
    """Batched operands of ``size`` elements per sample, not in ``excluded``, that multiply a tensor on ``path``
    (in a loop over the batch, the tensor that the sample's operand is a slice of)."""
    found = []
    for node in path:
        if not ((node.op == "call_function" and node.target in _MULTIPLY) or
                (node.op == "call_method" and node.target == "mul")):
            continue
        for operand in node.all_input_nodes:
            operand = _batched_origin(operand, values)
            value = values.get(operand)
            if (operand not in excluded and _batched(value) and value.numel() == PROBE_BATCH * size
                    and operand not in found):
                found.append(operand)
    return found


def _batched_origin(node: fx.Node, values: dict) -> fx.Node:
    """``node``, or the batched tensor it reshapes a slice of (``a[i].view(1, -1, 1, 1)``): a sample's factor in a
    loop over the batch."""
    origin = node
    while not _batched(values.get(origin)) and reshapes(origin):
        origin = origin.args[0]
    return origin if _batched(values.get(origin)) else node


def _subgraph(graph_module: fx.GraphModule, outputs: list) -> fx.GraphModule:
    """A GraphModule computing the tuple of ``outputs`` from the inputs (all of them, in order), with only the
    nodes they need (in-place changes of those included)."""
    needed = set(upstream(outputs))
    changes = [u for n in needed for u in n.users if changed_in_place(u) is n and u not in needed]
    while changes:  # ops changing a needed tensor in place (``a.masked_fill_(a < t, 0)``), and what they read
        needed |= set(upstream(changes))
        changes = [u for n in needed for u in n.users if changed_in_place(u) is n and u not in needed]
    needed |= {n for n in graph_module.graph.nodes if n.op == "placeholder"}
    graph, copies = fx.Graph(), {}
    for node in graph_module.graph.nodes:
        if node in needed:
            copies[node] = graph.node_copy(node, lambda n: copies[n])
    graph.output(tuple(copies[n] for n in outputs))
    read_batch_sizes(graph)
    return fx.GraphModule(graph_module, graph)


def _bias_readings(conv: _DynamicConv, values: dict, from_input: set, num_kernels: int):
    """``(expert bias [K, M] or None, static output bias [M] or None)`` candidates for the conv's bias."""
    biases = conv.sample_biases(values)
    if biases is None:
        if any(b is not None for b in conv.biases):
            return
        yield None, None
        return
    if torch.equal(biases, biases[:1].expand_as(biases)):
        yield None, biases[0]
    constants = [n for n in upstream(list(conv.biases)) if n not in from_input and isinstance(values.get(n), Tensor)]
    for node in constants:  # parameters mixed into the bias: [K, M] in some layout
        value = values[node]
        if value.numel() == num_kernels * conv.out_channels:
            for axis, size in enumerate(value.shape):
                if size == num_kernels:
                    yield value.movedim(axis, 0).reshape(num_kernels, conv.out_channels), None
    singles = _in_graph_order([n for n in constants if n.op == "get_attr" and values[n].numel() == conv.out_channels])
    if len(singles) == num_kernels > 1:  # K parameters of one bias each
        yield torch.stack([values[n].reshape(-1) for n in singles]), None


def _family(fields: tuple[_Field, ...], values: dict) -> str:
    """The kind of dynamic conv by the math found (the names of the native layers)."""
    attention = fields[0]
    if len(fields) > 1:
        return "odconv"
    if len(attention.shape) == 2:
        return "dynet"
    rows = attention.probe_value(values).reshape(PROBE_BATCH, -1).sum(dim=1)
    return "dynamic_conv" if torch.allclose(rows, torch.ones_like(rows), atol=1e-4) else "condconv"


def _routed(router: TracedRouting, weight: Tensor, bias: Optional[Tensor], output_bias: Optional[Tensor],
            conv: _DynamicConv, values: dict) -> RoutedConv2d:
    layer = RoutedConv2d(router, weight, bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                         groups=conv.groups, output_bias=output_bias, family=_family(router.fields, values))
    return layer.to(weight)  # the original's dtype and device


def _blocks(graph_module: fx.GraphModule, conv: _DynamicConv, values: dict, layer: RoutedConv2d,
            probe: tuple, name: str) -> Iterator[fx.GraphModule]:
    """The block with ``layer`` (its submodule ``name``) in place of each node after the conv whose probe value
    it gives."""
    output = _output(layer, probe)
    if output is None:
        return
    after_conv = downstream(graph_module.graph.nodes, conv.calls)
    for node in graph_module.graph.nodes:
        if node in after_conv and node.op != "output" and isinstance(values.get(node), Tensor) and _close(
                values[node], output):
            block = _block(graph_module, conv, node, layer, name)
            if block is not None:
                yield block


def _block(graph_module: fx.GraphModule, conv: _DynamicConv, replaced: fx.Node, layer: RoutedConv2d,
           name: str) -> Optional[fx.GraphModule]:
    """``graph_module`` with ``replaced`` computed by ``layer`` (added as submodule ``name``) from the inputs,
    without what only it needed; None if the original conv is still needed (a later op reads a result before
    ``replaced``)."""
    graph_module.add_module(name, layer)
    graph, copies = fx.Graph(), {}
    inputs = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    for node in graph_module.graph.nodes:
        if node is replaced:
            copies[node] = graph.call_module(name, tuple(copies[n] for n in inputs))
        else:
            copies[node] = graph.node_copy(node, lambda n: copies[n])
    read_batch_sizes(graph)
    owner = fx.GraphModule(graph_module, graph)  # (the purity check wants an owner)
    graph.eliminate_dead_code(is_impure_node=is_impure)
    if any(copies[call] in owner.graph.nodes for call in conv.calls):
        return None
    return fx.GraphModule(graph_module, graph, class_name="TracedBlock")  # only what is left is copied


def _free_name(module: nn.Module, name: str) -> str:
    """``name``, or it with leading underscores, not taken by an attribute of ``module``."""
    while hasattr(module, name):
        name = "_" + name
    return name


def _output(layer: nn.Module, inputs: tuple) -> Optional[Tensor]:
    """``layer(*inputs)``, or None where a reading's shapes do not fit (not this reading)."""
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # fx prints a failing call's traceback
        try:
            return layer.forward(*inputs)  # not __call__: see TracedRouting.forward
        except Exception:
            return None


def _reproduces(layer: nn.Module, inputs: tuple, expected) -> bool:
    actual = _output(layer, inputs)
    return actual is not None and isinstance(expected, Tensor) and _close(actual, expected)

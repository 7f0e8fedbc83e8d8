"""Batch the per-sample branches of an unrolled loop: one graph run for the whole batch instead of N copies.

A layer that computes its attention inside its loop over the samples (``for xi in x: a = self.gate(xi)``)
traces, with the batch size as a number, into one copy of the attention's ops per sample, each on its own
slice of the input; no tensor of the trace holds the whole batch's attention, so none can be a router's
output. :func:`batch_sample_branches` rewrites such a graph: sample 0's branch becomes one graph
(:class:`SampleMap`) run for the whole batch — as it is written, where its ops take a batch (a gate called
on ``x[i:i+1]``), or under ``torch.func.vmap`` for an unbatched sample (which ``torch.export``, and so the
ONNX export, turns into batched ops) — and every sample's branch tensors are read from its outputs
``[N, ...]``. The readings of :mod:`dyconv_deploy.convert.traced` then find the attention among those batched
outputs as in any other layer.
"""

import contextlib
import itertools
import operator
from collections import Counter
from typing import Optional

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.tools_common import stable_topological_sort

from dyconv_deploy.convert.graph_nodes import downstream, reshapes, same_tensor, upstream


class SampleMap(nn.Module):
    """One sample's branch run for the whole batch: the batch's tensors ``[N, ...]`` (one per branch input) ``->``
    the branch's outputs, each ``[N, ...]``. ``vmapped``: the branch takes one unbatched sample and runs under
    ``torch.func.vmap``; else it is written so that it takes the batch as it is (a gate called on ``x[i:i+1]``)."""

    def __init__(self, branch: fx.GraphModule, vmapped: bool):
        super().__init__()
        self.branch = branch
        self.vmapped = vmapped

    def forward(self, *batched: Tensor) -> tuple:
        # forward itself, not __call__: see traced.TracedRouting.forward
        return torch.func.vmap(self.branch.forward)(*batched) if self.vmapped else self.branch.forward(*batched)


PARAMETERS_OUTSIDE = ("mixing", "all", "none")  # which of the layer's parameters stay in the branches


def batch_sample_branches(graph_module: fx.GraphModule, sample_results: list, convs: set, values: dict,
                          from_input: set, out_channels: int, max_numel: int, name: str,
                          parameters_outside: str = "mixing") -> Optional[fx.GraphModule]:
    """``graph_module`` rewritten so that the per-sample branches ending in ``sample_results`` (the nodes of each
    probe sample, e.g. its conv's result) read their tensors of at most ``max_numel`` elements per sample, computed
    before any of the ``convs``, from one :class:`SampleMap` (added to ``graph_module`` as submodule ``name``) over
    the batch. What is computed from some of the layer's own parameters stays in the branches, where a reading
    can see those parameters (``parameters_outside``, one of :data:`PARAMETERS_OUTSIDE`): ``"mixing"``, those
    that a tensor of the branch mixes into ``out_channels`` outputs (an expert bias ``[K, M]`` by the attention
    ``[K]``, ``a @ self.bias``, or one ``[M]`` per expert by its number), not a gate's own (``F.linear(x, w)``);
    ``"all"``; or ``"none"``.

    ``values`` are the nodes' probe values and ``from_input`` the nodes computed from the layer's inputs. The
    branches must be copies of one another (the same ops in the same order) whose only inputs from the rest of
    the graph are slices of the batch's tensors: ``t[i]`` or ``t[i:i+1]`` of a ``[N, ...]`` tensor ``t`` for
    sample i. Sample 0's branch is run on the whole batch as it is written (up to an op that fails so) and under
    ``vmap``; the way that gives more of the branches' own values on the probe is kept (``vmap`` only if
    ``torch.export`` can then still take a dynamic batch: its vmap rules for conv and LayerNorm pin it, so a
    vmapped branch has its LayerNorms and 1x1 convs in plain ops, and a larger conv refuses it), and only the
    tensors it gives are read from it. None where no way gives one.
    """
    branches = _branches(sample_results, from_input)
    slices = None if branches is None else _slices(branches, values, from_input)
    if slices is None:
        return None
    kept_out = downstream(branches[0], convs | _parameters_outside(branches[0], values, out_channels,
                                                                    parameters_outside))
    candidates = [position for position, node in enumerate(branches[0])
                  if isinstance(values[node], Tensor) and values[node].is_floating_point()
                  and 0 < values[node].numel() <= max_numel and node not in slices and node not in kept_out]
    sources = _sources(branches[0], slices, candidates)
    ways = []
    for vmapped in (False, True):
        branch = _sample_graph(graph_module, branches[0], slices, sources, candidates, vmapped)
        kept = _reproduced(_outputs(branch, [values[s] for s in sources], vmapped), candidates, branches, values)
        if kept:
            ways.append((len(kept), not vmapped, kept))
    for _, direct, kept in sorted(ways, reverse=True):  # more values first, as written before vmap
        kept = _cut(branches[0], kept)
        positions = [position for position, _ in kept]
        sources = _sources(branches[0], slices, positions)
        mapped = SampleMap(_sample_graph(graph_module, branches[0], slices, sources, positions, not direct),
                           not direct)
        if direct or _exports(mapped, [values[s] for s in sources]):
            return _rewritten(graph_module, mapped, name, branches, sources, kept)
    return None


def _parameters_outside(branch: list, values: dict, out_channels: int, which: str) -> set:
    """The parameters (``get_attr`` nodes) read by ``branch`` whose results stay in it (see
    :func:`batch_sample_branches`)."""
    parameters = {i for n in branch for i in n.all_input_nodes if i.op == "get_attr"}
    if which != "mixing":
        return parameters if which == "all" else set()
    mixing = set()
    for node in branch:
        operands = [values.get(i) for i in node.all_input_nodes if i not in parameters]
        for parameter in (i for i in node.all_input_nodes if i in parameters):
            size = values[parameter].numel()
            if size % out_channels == 0 and any(isinstance(v, Tensor) and size in (v.numel() * out_channels,
                                                                                   v.numel()) for v in operands):
                mixing.add(parameter)
    return mixing


def _outputs(branch: fx.GraphModule, batch: list, vmapped: bool) -> list:
    """The branch's outputs on the probe's ``batch`` (None for those it cannot compute): as written, up to
    the first op that fails so; under ``vmap``, all or none."""
    returned = next(n for n in reversed(branch.graph.nodes) if n.op == "output").args[0]
    with torch.no_grad():
        if vmapped:
            with contextlib.suppress(Exception):
                return list(SampleMap(branch, vmapped=True)(*batch))
            return [None] * len(returned)
        computed = {}

        class Recorder(fx.Interpreter):
            def run_node(self, node):
                computed[node] = super().run_node(node)
                return computed[node]

        with contextlib.suppress(Exception):
            Recorder(branch).run(*batch)
    return [computed.get(n) for n in returned]


def _exports(mapped: SampleMap, batch: list) -> bool:
    """Whether ``torch.export`` takes ``mapped`` with a dynamic batch (``vmap`` of a conv pins it)."""
    dimension = torch.export.Dim("batch")
    try:
        torch.export.export(mapped, tuple(batch), dynamic_shapes=(tuple({0: dimension} for _ in batch),),
                            strict=False)  # (one entry: forward takes *batched)
    except Exception:
        return False
    return True


def _rewritten(graph_module: fx.GraphModule, mapped: SampleMap, name: str, branches: list, sources: list,
               kept: list) -> fx.GraphModule:
    """A copy of ``graph_module`` whose branches read the tensors at ``kept`` (positions, keeps_axis) from
    ``mapped`` (added to ``graph_module`` as ``name``) on the ``sources``."""
    graph_module.add_module(name, mapped)
    graph, copies = fx.Graph(), {}
    graph.output(graph.graph_copy(graph_module.graph, copies))
    with graph.inserting_before(copies[branches[0][0]]):
        call = graph.call_module(name, tuple(copies[s] for s in sources))
        for output, (position, keeps_axis) in enumerate(kept):
            batched = graph.call_function(operator.getitem, (call, output))
            for sample, branch in enumerate(branches):
                index = slice(sample, sample + 1) if keeps_axis else sample
                copies[branch[position]].replace_all_uses_with(
                    graph.call_function(operator.getitem, (batched, index)))
    rewritten = fx.GraphModule(graph_module, graph)
    graph.eliminate_dead_code(is_impure_node=is_impure)
    stable_topological_sort(rewritten)  # a source may be computed after sample 0's branch begins
    rewritten.recompile()
    return rewritten


def _cut(branch: list, kept: list) -> list:
    """The ``(position, keeps_axis)`` of ``kept`` that are neither a view of another kept one (``a[k]``,
    ``a.view(...)``) nor computed from two or more that are computed independently (``spatial * channel``,
    not ``g / g.sum()``): those stay in the branches, computed from the batched tensors, so that these are the
    ones the kernels are computed from (the attention ``[N, K]``, not K numbers ``[N]``; ODConv's factors one by
    one, not their product)."""
    nodes = {branch[position] for position, _ in kept}
    members = set(branch)

    def derived(node: fx.Node) -> bool:
        if reshapes(node) and node.args[0] in nodes:
            return True
        inputs = [i for i in node.all_input_nodes if i in nodes]
        return any(a not in upstream([b], members) and b not in upstream([a], members)
                   for a, b in itertools.combinations(inputs, 2))

    return [(position, keeps_axis) for position, keeps_axis in kept if not derived(branch[position])]


def changed_in_place(node: fx.Node) -> Optional[fx.Node]:
    """The tensor ``node`` changes in place (its first argument: ``a.masked_fill_(...)``, ``torch.relu_(y)``,
    ``F.relu(y, inplace=True)``, ``nn.ReLU(inplace=True)``), or None."""
    if node.op == "call_module":
        in_place = getattr(node.graph.owning_module.get_submodule(node.target), "inplace", False) is True
    else:
        name = getattr(node.target, "__name__", str(node.target))
        in_place = node.op in ("call_method", "call_function") and (
            (name.endswith("_") and not name.startswith("_")) or node.kwargs.get("inplace") is True)
    return node.args[0] if in_place and node.args and isinstance(node.args[0], fx.Node) else None


def is_impure(node: fx.Node) -> bool:
    """For ``eliminate_dead_code``: fx's impure ops, and an op changing a tensor in place that a later op still
    reads (dead code is removed last node first, so readers removed as dead no longer count)."""
    changed = changed_in_place(node)
    if node.is_impure() or changed is None:
        return node.is_impure()
    readers = {user for user in changed.users if changed_in_place(user) is not changed}
    later = node.next
    while later.op != "root":  # (the graph's nodes are a ring closed by its root)
        if later in readers:
            return True
        later = later.next
    return False


def _reproduced(outputs: list, candidates: list, branches: list, values: dict) -> list:
    """``(position, keeps_axis)`` for each of the ``candidates`` positions whose output (of ``outputs``, in
    order; None where not computed) gives every sample's value there (sample i's being its item i, or its slice
    ``[i:i+1]`` where ``keeps_axis``)."""
    kept = []
    for position, batched in zip(candidates, outputs):
        own = [values[branch[position]] for branch in branches]
        if not (isinstance(batched, Tensor) and batched.dim() >= 1 and batched.shape[0] == len(own)):
            continue
        for keeps_axis in (False, True):
            pieces = [batched[i:i + 1] if keeps_axis else batched[i] for i in range(len(own))]
            if all(p.shape == v.shape and torch.allclose(p, v, rtol=1e-4, atol=1e-6) for p, v in zip(pieces, own)):
                kept.append((position, keeps_axis))
                break
    return kept


def _branches(sample_results: list, from_input: set) -> Optional[list]:
    """Each sample's branch: the input-dependent nodes its results are computed from that no other sample's
    are, in graph order; None unless every branch has the same ops in the same order."""
    graph = sample_results[0][0].graph
    order = {n: i for i, n in enumerate(graph.nodes)}
    computed_from = [set(upstream(results, from_input)) for results in sample_results]
    uses = Counter(n for nodes in computed_from for n in nodes)
    branches = [sorted((n for n in nodes if uses[n] == 1), key=order.__getitem__) for nodes in computed_from]
    signatures = {tuple((n.op, n.target) for n in branch) for branch in branches}
    return branches if len(signatures) == 1 and len(branches[0]) > 1 else None


def _slices(branches: list, values: dict, from_input: set) -> Optional[dict]:
    """``{node: (source, keeps_axis)}`` for sample 0's branch nodes that read the rest of the graph: sample i's
    node there is ``source[i]`` (or ``source[i:i+1]`` where ``keeps_axis``) of a batched ``source``, the same for
    every sample; None where a branch reads the rest of the graph otherwise. A node that only gives such a slice
    a leading axis of 1 again (``x[i].unsqueeze(0)``) is one too, keeping it."""
    slices = {}
    members = [set(branch) for branch in branches]
    for position, node in enumerate(branches[0]):
        inputs = [i for i in node.all_input_nodes if i in from_input]
        if any(i not in members[0] for i in inputs):
            found = {_slice_of(branch[position], sample, members[sample], values, from_input)
                     for sample, branch in enumerate(branches)}
            if len(found) != 1 or None in found:
                return None
            slices[position] = found.pop()
        elif inputs and all(branches[0].index(i) in slices for i in inputs):
            sources = {slices[branches[0].index(i)][0] for i in inputs}
            if len(sources) == 1 and all(same_tensor(values[branch[position]], values[next(iter(sources))][i:i + 1])
                                         for i, branch in enumerate(branches)):
                slices[position] = (sources.pop(), True)
    return {branches[0][position]: reading for position, reading in slices.items()}


def _slice_of(node: fx.Node, sample: int, branch: set, values: dict, from_input: set) -> Optional[tuple]:
    """``(source, keeps_axis)`` where ``node``'s value is sample ``sample`` of an input-dependent batched tensor
    it is computed from outside ``branch`` (nearest first), else None."""
    value = values.get(node)
    if not isinstance(value, Tensor):
        return None
    stack, seen = [i for i in node.all_input_nodes if i not in branch], set()
    while stack:
        source = stack.pop(0)
        if source in seen or source not in from_input:
            continue
        seen.add(source)
        batch = values.get(source)
        if isinstance(batch, Tensor) and batch.dim() >= 1 and batch.shape[0] > sample:
            for keeps_axis, piece in ((False, batch[sample]), (True, batch[sample:sample + 1])):
                if same_tensor(value, piece):
                    return source, keeps_axis
        stack.extend(source.all_input_nodes)
    return None


def _unfold_for_vmap(graph_module: fx.GraphModule, graph: fx.Graph) -> None:
    """``nn.LayerNorm`` and pointwise ``nn.Conv2d`` calls of ``graph`` replaced (in place) by the same math in plain
    ops, which ``torch.export`` batches under ``vmap`` with a dynamic batch (their own batching rules pin it)."""
    for node in list(graph.nodes):
        module = graph_module.get_submodule(node.target) if node.op == "call_module" else None
        if type(module) is nn.LayerNorm:
            function, options = _layer_norm, (tuple(module.normalized_shape), module.eps)
        elif type(module) is nn.Conv2d and _is_pointwise(module):
            function, options = _pointwise_conv, ()
        else:
            continue
        with graph.inserting_before(node):
            weight, bias = (graph.get_attr(f"{node.target}.{name}") if getattr(module, name) is not None else None
                            for name in ("weight", "bias"))
            node.replace_all_uses_with(graph.call_function(function, (node.args[0], weight, bias, *options)))
        graph.erase_node(node)


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding in ((0, 0), 0, "valid", "same"))


def _layer_norm(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], shape: tuple, eps: float) -> Tensor:
    """``F.layer_norm`` over the last ``len(shape)`` axes, in ops ``vmap`` batches for ``torch.export``."""
    axes = tuple(range(-len(shape), 0))
    mean = x.mean(axes, keepdim=True)
    y = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(axes, keepdim=True) + eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def _pointwise_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """A 1x1 conv of ``x [C, H, W]`` or ``[N, C, H, W]`` with ``weight [M, C, 1, 1]``, as an ``einsum``."""
    y = torch.einsum("...chw,mc->...mhw", x, weight[:, :, 0, 0])
    return y if bias is None else y + bias[:, None, None]


def _needed(branch: list, positions: list) -> set:
    """The nodes of ``branch`` that those at ``positions`` are computed from (themselves included)."""
    members = set(branch)
    return set(upstream([branch[p] for p in positions], members))


def _sources(branch: list, slices: dict, positions: list) -> list:
    """The batch's tensors whose slices the nodes at ``positions`` are computed from, in the branch's order."""
    needed = _needed(branch, positions)
    return list(dict.fromkeys(slices[n][0] for n in branch if n in slices and n in needed))


def _sample_graph(graph_module: fx.GraphModule, branch: list, slices: dict, sources: list, outputs: list,
                  vmapped: bool) -> fx.GraphModule:
    """Sample 0's ``branch`` with an input per source (:func:`_sources` of ``outputs``), its slices' nodes reading
    it (``vmapped``: one sample of it, with a leading axis of 1 where the slice kept one; else the whole batch),
    the nodes at ``outputs`` out."""
    graph, copies = fx.Graph(), {}
    inputs = {source: graph.placeholder(f"batch_{index}") for index, source in enumerate(sources)}

    def copy(node: fx.Node) -> fx.Node:
        if node not in copies:  # a constant the branch uses (a parameter, or computed from parameters)
            for argument in node.all_input_nodes:
                copy(argument)
            copies[node] = graph.node_copy(node, copies.__getitem__)
        return copies[node]

    needed = _needed(branch, outputs)
    for node in (n for n in branch if n in needed):
        if node in slices:
            source, keeps_axis = slices[node]
            copies[node] = (graph.call_method("unsqueeze", (inputs[source], 0)) if vmapped and keeps_axis
                            else inputs[source])
        else:
            copy(node)
    graph.output(tuple(copies[branch[position]] for position in outputs))
    if vmapped:
        _unfold_for_vmap(graph_module, graph)
    fx.GraphModule(graph_module, graph)  # the owner the purity check wants
    graph.eliminate_dead_code(is_impure_node=is_impure)
    return fx.GraphModule(graph_module, graph)  # only what is left is copied

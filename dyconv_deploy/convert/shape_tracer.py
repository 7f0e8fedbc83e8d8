"""A ``torch.fx`` tracer for dynamic-conv layers: shapes unpacked, and the batch size as a number if need be.

Plain ``torch.fx`` refuses ``*y.shape[-2:]`` (a proxy has no length) and any Python loop over the batch
(``range(x.shape[0])``). :class:`ShapeTracer` traces both, for :mod:`dyconv_deploy.convert.traced`.
"""

import contextlib
import operator
from typing import Optional

import torch
from torch import Tensor, fx, nn
from torch.fx import _symbolic_trace  # the originals of what the tracer patches


class ShapeTracer(fx.Tracer):
    """``torch.fx``'s tracer (parameter shapes as numbers, so ``*self.weight.shape[-2:]`` traces) that also
    unpacks slices of a traced tensor's shape, ``*y.shape[-2:]`` or ``*x.size()[2:]``: the input is 4-D, any
    other tensor is taken as ``rank``-D where the slice does not say its length (``guessed`` says whether it
    was; a wrong guess fails the probe or the readings, and the caller tries the next rank).

    With ``example`` (the layer's inputs, of ``batch`` samples), each node's value is computed as it is traced,
    so that iterating a tensor, ``len`` of it, gives its own length (a sample's ``[K]`` attention zipped with
    the experts). With ``batch``, a tensor's first size (``x.shape[0]``, ``x.size(0)``, ``len(x)``) is traced as that
    number, so a Python loop over the batch (``range(len(x))``, ``for xi in x``) is unrolled into one branch per
    sample; where ``x.shape[0]`` or ``x.size(0)`` reaches an op (``a.view(n, -1)``) it is a :class:`TracedBatch`,
    which :func:`read_batch_sizes` turns back into a read of the input's batch (``len(x)`` is a plain number:
    Python's ``len`` makes it one). The first size of a tensor computed from a selection of samples (``x[i:i+1]``,
    as a gate called inside the loop reads it: ``xi.view(xi.size(0), -1)``) stays a read in the graph.
    """

    def __init__(self, batch: Optional[int] = None, rank: int = 4, example: tuple = ()):
        super().__init__(param_shapes_constant=True)
        self.batch = batch
        self.rank = rank
        self.guessed = False
        self.example = example
        self.values: dict[fx.Node, object] = {}  # the nodes' values on ``example``, where they could be computed
        self._tensors: Optional[dict] = None

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def shape_length(self, node: fx.Node) -> Optional[int]:
        """How many sizes a ``shape`` / ``size()`` node (or a slice of one) holds, None if it is not one."""
        length = _shape_length(node, self.rank)
        if length is not None:
            self.guessed |= not _is_first_input(_shaped_tensor(node))
        return length

    def iter(self, obj: fx.Proxy):
        length = self.shape_length(obj.node)
        if length is None and self.batch is not None:
            length = self._first_size(obj.node)
        if length is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(length)])

    def _first_size(self, node: fx.Node) -> int:
        """How many items iterating the traced ``node`` gives: its value's length on the example (a sample's
        attention, a parameter of K experts), else the batch (``for xi in x``, ``zip(x, attention)``)."""
        value = self.values.get(node)
        if isinstance(value, (tuple, list)) or (isinstance(value, Tensor) and value.dim() > 0):
            return len(value)
        return self.batch

    def _run(self, node: fx.Node) -> None:
        """Compute ``node``'s value on the example, from its inputs' (nothing where one is not known)."""
        try:
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), self.values.__getitem__)
            if node.op == "placeholder":
                value = self.example[sum(n.op == "placeholder" for n in self.values)]
            elif node.op == "get_attr":  # (the tracer patches module attributes into proxies: the tensors' own)
                if self._tensors is None:
                    self._tensors = {**dict(self.root.named_parameters()), **dict(self.root.named_buffers())}
                value = self._tensors[node.target]
            elif node.op == "call_function":
                value = node.target(*args, **kwargs)
            elif node.op == "call_method":
                value = getattr(args[0], node.target)(*args[1:], **kwargs)
            elif node.op == "call_module":
                with _modules_unpatched():  # else the module's parameters would be traced into the graph
                    value = self.root.get_submodule(node.target)(*args, **kwargs)
            else:
                return
        except Exception:  # a value this cannot compute: iterating the node counts the batch
            return
        self.values[node] = value

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        # the full signature: fx passes parameter proxies (constant shapes) only to a create_proxy that names it
        if self.batch is not None and _reads_batch_size(kind, target, args, kwargs):
            return TracedBatch(self.batch)
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if self.batch is not None and (_selects_samples(kind, target, args) or any(
                n.meta.get(_PER_SAMPLE) for n in proxy.node.all_input_nodes)):
            proxy.node.meta[_PER_SAMPLE] = True  # its first size is no longer the batch: read it in the graph
        if self.example:
            with torch.no_grad():
                self._run(proxy.node)
        return proxy


@contextlib.contextmanager
def _modules_unpatched():
    """``nn.Module``'s own ``__call__`` and ``__getattr__``, which ``torch.fx`` patches while it traces (to record
    module calls and parameter reads), for a module run on real tensors in the middle of a trace."""
    patched = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__, nn.Module.__getattr__ = _symbolic_trace._orig_module_call, _symbolic_trace._orig_module_getattr
    try:
        yield
    finally:
        nn.Module.__call__, nn.Module.__getattr__ = patched


_PER_SAMPLE = "dyconv_per_sample"  # node meta: computed from a selection of samples (``x[i]``), not the whole batch


class TracedBatch(int):
    """The batch size as a trace with a fixed batch read it: an int, marked for :func:`read_batch_sizes`
    (arithmetic on it gives plain ints)."""


def read_batch_sizes(graph: fx.Graph) -> None:
    """Replace the :class:`TracedBatch` numbers in ``graph``'s op arguments by ``x.size(0)`` of its first input
    (in place), so that a subgraph of an unrolled trace runs at any batch."""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    size = None

    def read(argument):
        nonlocal size
        if type(argument) is not TracedBatch:
            return argument
        if size is None:
            with graph.inserting_after(inputs[-1]):
                size = graph.call_method("size", (inputs[0], 0))
        return size

    for node in list(graph.nodes):
        node.args = fx.node.map_aggregate(node.args, read)
        node.kwargs = fx.node.map_aggregate(node.kwargs, read)


class _ShapeProxy(fx.Proxy):
    """A proxy whose ``len`` is known when it is a traced shape (star-unpacking asks for it first), or is
    the traced batch for a tensor."""

    def __len__(self):
        length = self.tracer.shape_length(self.node)
        if length is None and self.tracer.batch is not None:
            return self.tracer._first_size(self.node)  # len() must return a plain int
        return super().__len__() if length is None else length


def _is_first_input(node: fx.Node) -> bool:
    """The graph's first placeholder: the layer's ``x [N, C, H, W]``."""
    return node.op == "placeholder" and node.prev.op == "root"


def _is_shape(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target is getattr and node.args[1] == "shape") or (
        node.op == "call_method" and node.target == "size" and len(node.args) == 1)


def _shaped_tensor(node: fx.Node) -> fx.Node:
    """The tensor whose shape a shape node (or a slice of one) reads."""
    while not _is_shape(node):
        node = node.args[0]
    return node.args[0]


def _shape_length(node: fx.Node, rank: int) -> Optional[int]:
    """How many sizes a ``shape`` / ``size()`` node (or a slice of one) holds (the input's 4, another tensor's
    ``rank``), None if it is not one."""
    if _is_shape(node):
        return 4 if _is_first_input(node.args[0]) else rank
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], slice):
        inner = node.args[0]
        length = _shape_length(inner, rank) if isinstance(inner, fx.Node) else None
        return None if length is None else len(range(length)[node.args[1]])
    return None


def _reads_batch_size(kind: str, target, args: tuple, kwargs: dict) -> bool:
    """Whether the call is ``tensor.shape[0]`` / ``tensor.size(0)`` of a tensor of the whole batch."""
    if kind == "call_function" and target is operator.getitem and isinstance(args[0], fx.Proxy):
        return (isinstance(args[1], int) and args[1] == 0 and _is_shape(args[0].node)
                and not _shaped_tensor(args[0].node).meta.get(_PER_SAMPLE))
    if kind == "call_method" and target == "size":
        return (args[1:] or (kwargs.get("dim"),)) == (0,) and not args[0].node.meta.get(_PER_SAMPLE)
    return False


def _selects_samples(kind: str, target, args: tuple) -> bool:
    """Whether the call indexes the first axis, ``x[i]`` or ``x[i:i+1]`` (a sample of a loop over the batch;
    of a tuple, one of its tensors)."""
    if not (kind == "call_function" and target is operator.getitem and isinstance(args[0], fx.Proxy)):
        return False
    index = args[1][0] if isinstance(args[1], tuple) and args[1] else args[1]
    return not isinstance(index, slice) or index != slice(None)

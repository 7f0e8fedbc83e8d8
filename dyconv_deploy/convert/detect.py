"""Find convolutions whose weight depends on the input (dynamic convs no adapter converted), and layers that
mix the outputs of static expert convs with input-dependent weights.

One eager forward runs under a :class:`~torch.utils._python_dispatch.TorchDispatchMode` that
tracks which tensors are computed from the model inputs; an ``aten.convolution`` whose weight
is such a tensor is a dynamic conv the exporters cannot handle. A static conv on such a tensor is
recorded by the module that runs it: a module running two or more of one geometry on the same input,
or one whose output channels are K >= 2 times its own output's, may be a dynamic conv written
experts-first (``sum(a[:, k] * conv_k(x))``, DyNet's ``fixed_kernels``), which
:mod:`~dyconv_deploy.convert.traced` then tries to read. Forward hooks, removed afterwards, give the
path of the innermost module running at that moment.
"""

import weakref
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = "<model>"

# ATen ops every F.conv*d / nn.Conv*d call reaches below autograd (conv2d & co. decompose into them).
_CONVOLUTIONS = {"convolution", "_convolution"}


@dataclass(frozen=True)
class UnknownDynamicConv:
    """A convolution with an input-dependent weight inside module ``path`` (of class ``module_type``);
    ``reason``: why the converter could not convert the layer, when it tried."""

    path: str
    module_type: str
    calls: int
    reason: str = ""


@dataclass
class ConvolutionScan:
    """What :func:`scan_convolutions` found: the dynamic convs, and the paths of the modules that may mix the
    outputs of static expert convs (``mixtures``: candidates, most are ordinary blocks)."""

    dynamic: list[UnknownDynamicConv] = field(default_factory=list)
    mixtures: list[str] = field(default_factory=list)


class _InputDependence(TorchDispatchMode):
    """Taints every tensor computed from a tainted one; records convolutions on tainted weights, and static ones
    on tainted inputs by the (non-conv) module running them."""

    def __init__(self, inputs, module_stack: list[str], conv_paths: set):
        super().__init__()
        self._tainted: dict[int, weakref.ref] = {}
        self._stack = module_stack
        self._conv_paths = conv_paths
        self.hits: dict[str, int] = {}
        self.static_convs: Counter = Counter()  # (module path, input id, geometry) -> calls
        self.static_outputs: dict[str, set] = {}  # module path -> output channels of its static convs
        for t in inputs:
            self._taint(t)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Only ever run eagerly: the default wraps __torch_dispatch__ in torch._disable_dynamo, whose
        # first call imports torch._dynamo (~1 s, ~0.4 s more at exit) in a process that never compiles.
        return False

    def _record_static(self, args: tuple) -> None:
        owner = next(path for path in reversed(self._stack) if path not in self._conv_paths)
        geometry = tuple(str(a) for a in args[3:]) + (tuple(args[1].shape), args[2] is None)
        self.static_convs[(owner, id(args[0]), geometry)] += 1
        self.static_outputs.setdefault(owner, set()).add(args[1].shape[0])

    def _taint(self, t: Tensor) -> None:
        self._tainted[id(t)] = weakref.ref(t)

    def _is_tainted(self, t) -> bool:
        ref = self._tainted.get(id(t)) if isinstance(t, Tensor) else None
        return ref is not None and ref() is t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket.__name__ in _CONVOLUTIONS and len(args) > 1:
            if self._is_tainted(args[1]):
                path = self._stack[-1]
                self.hits[path] = self.hits.get(path, 0) + 1
            elif self._is_tainted(args[0]):
                self._record_static(args)
        if any(self._is_tainted(t) for t in tree_leaves((args, kwargs))):
            for t in tree_leaves(out):
                if isinstance(t, Tensor):
                    self._taint(t)
        return out


def find_dynamic_convs(model: nn.Module, example_inputs: tuple) -> list[UnknownDynamicConv]:
    """Convolutions in ``model(*example_inputs)`` whose weight depends on the inputs, by module path."""
    return scan_convolutions(model, example_inputs).dynamic


def scan_convolutions(model: nn.Module, example_inputs: tuple) -> ConvolutionScan:
    """The convolutions of one ``model(*example_inputs)``: those whose weight depends on the inputs, by module
    path, and the modules that may mix static expert convs (two or more of one geometry on the same input
    tensor, or one with K >= 2 times the channels of the module's own output)."""
    paths = {module: path for path, module in model.named_modules()}
    conv_paths = {path or ROOT for module, path in paths.items() if isinstance(module, nn.modules.conv._ConvNd)}
    stack = [ROOT]
    output_channels: dict[str, int] = {}

    def enter(module, args):
        stack.append(paths[module] or ROOT)

    def leave(module, args, output):
        path = stack.pop()
        if isinstance(output, Tensor) and output.dim() == 4:
            output_channels.setdefault(path, output.shape[1])

    hooks = [hook for module in paths for hook in (module.register_forward_pre_hook(enter),
                                                   module.register_forward_hook(leave))]
    mode = _InputDependence([t for t in tree_leaves(example_inputs) if isinstance(t, Tensor)], stack, conv_paths)
    try:
        with torch.no_grad(), mode:
            output = model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if isinstance(output, Tensor) and output.dim() == 4:
        output_channels.setdefault(ROOT, output.shape[1])
    by_path = {path or ROOT: module for module, path in paths.items()}
    dynamic = [UnknownDynamicConv(path, type(by_path[path]).__name__, calls) for path, calls in mode.hits.items()]
    repeated = {owner for (owner, _, _), calls in mode.static_convs.items() if calls > 1}
    widened = {owner for owner, channels in mode.static_outputs.items()
               if any(c % output_channels.get(owner, c) == 0 and c >= 2 * output_channels.get(owner, c)
                      for c in channels)}
    mixtures = [path for path in dict.fromkeys(p for p, _, _ in mode.static_convs) if path in repeated | widened]
    return ConvolutionScan(dynamic, mixtures)

"""Find convolutions whose weight depends on the input (dynamic convs no adapter converted).

One eager forward runs under a :class:`~torch.utils._python_dispatch.TorchDispatchMode` that
tracks which tensors are computed from the model inputs; an ``aten.convolution`` whose weight
is such a tensor is a dynamic conv the exporters cannot handle. Forward hooks, removed
afterwards, give the path of the innermost module running at that moment.
"""

import weakref
from dataclasses import dataclass

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


class _InputDependence(TorchDispatchMode):
    """Taints every tensor computed from a tainted one; records convolutions on tainted weights."""

    def __init__(self, inputs, module_stack: list[str]):
        super().__init__()
        self._tainted: dict[int, weakref.ref] = {}
        self._stack = module_stack
        self.hits: dict[str, int] = {}
        for t in inputs:
            self._taint(t)

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Only ever run eagerly: the default wraps __torch_dispatch__ in torch._disable_dynamo, whose
        # first call imports torch._dynamo (~1 s, ~0.4 s more at exit) in a process that never compiles.
        return False

    def _taint(self, t: Tensor) -> None:
        self._tainted[id(t)] = weakref.ref(t)

    def _is_tainted(self, t) -> bool:
        ref = self._tainted.get(id(t)) if isinstance(t, Tensor) else None
        return ref is not None and ref() is t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket.__name__ in _CONVOLUTIONS and len(args) > 1 and self._is_tainted(args[1]):
            path = self._stack[-1]
            self.hits[path] = self.hits.get(path, 0) + 1
        if any(self._is_tainted(t) for t in tree_leaves((args, kwargs))):
            for t in tree_leaves(out):
                if isinstance(t, Tensor):
                    self._taint(t)
        return out


def find_dynamic_convs(model: nn.Module, example_inputs: tuple) -> list[UnknownDynamicConv]:
    """Convolutions in ``model(*example_inputs)`` whose weight depends on the inputs, by module path."""
    paths = {module: path for path, module in model.named_modules()}
    stack = [ROOT]

    def enter(module, args):
        stack.append(paths[module] or ROOT)

    def leave(module, args, output):
        stack.pop()

    hooks = [hook for module in paths for hook in (module.register_forward_pre_hook(enter),
                                                   module.register_forward_hook(leave))]
    mode = _InputDependence([t for t in tree_leaves(example_inputs) if isinstance(t, Tensor)], stack)
    try:
        with torch.no_grad(), mode:
            model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    by_path = {path or ROOT: module for module, path in paths.items()}
    return [UnknownDynamicConv(path, type(by_path[path]).__name__, calls) for path, calls in mode.hits.items()]

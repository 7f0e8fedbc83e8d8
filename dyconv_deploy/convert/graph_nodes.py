"""Walks over a ``torch.fx`` graph's nodes shared by the trace readings (:mod:`~dyconv_deploy.convert.traced`,
:mod:`~dyconv_deploy.convert.sample_batching`)."""

import operator
from typing import Iterable, Optional

import torch
from torch import Tensor, fx

# Methods that give the same numbers in another shape (a view of their first argument, or a copy of it).
RESHAPES = {"view", "reshape", "unsqueeze", "squeeze", "flatten", "expand_as", "contiguous"}


def upstream(nodes, within: Optional[set] = None) -> list:
    """``nodes`` and the nodes they are computed from, nearest first (depth first), only through ``within``."""
    order, seen, stack = [], set(), list(reversed(list(nodes)))
    while stack:
        current = stack.pop()
        if current in seen or (within is not None and current not in within):
            continue
        seen.add(current)
        order.append(current)
        stack.extend(current.all_input_nodes)
    return order


def downstream(nodes: Iterable[fx.Node], sources) -> set:
    """Of ``nodes`` (in graph order: a graph's, or a part of one), those that are ``sources`` or are computed
    from them."""
    sources, found = set(sources), set()
    for node in nodes:
        if node in sources or any(i in found or i in sources for i in node.all_input_nodes):
            found.add(node)
    return found


def reshapes(node: fx.Node) -> bool:
    """Whether ``node`` indexes (``a[i]``) or reshapes (:data:`RESHAPES`) its first argument."""
    return ((node.op == "call_function" and node.target is operator.getitem)
            or (node.op == "call_method" and node.target in RESHAPES)) and isinstance(node.args[0], fx.Node)


def same_tensor(value, expected: Tensor) -> bool:
    """``value`` is a tensor equal to ``expected``, shape included."""
    return isinstance(value, Tensor) and value.shape == expected.shape and torch.equal(value, expected)

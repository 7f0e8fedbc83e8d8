"""Check an exported graph before anything runs it: ``onnx.checker``, strict shape inference, and the
input shapes of every ``dyconv::DynamicConv2d`` node against the op contract.

Comparing a graph's outputs with PyTorch's is :mod:`dyconv_deploy.verify` (it runs a runtime, a
stage above this one).
"""

import onnx

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.onnx_export import check_model, contract_nodes

_CONTRACT = "X [N, C, H, W], A [N, K] or [N, K, M], W [K, M, C/group, kH, kW], B [K, M], S [N, kH, kW]"


def check_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker``, strict shape inference and the contract shapes of every ``dyconv::DynamicConv2d``
    node (:func:`check_contract_shapes`); returns the shape-inferred model.

    Raises:
        DyconvError: one line naming the first problem (the checker's first line, or the node and the
            inputs that break the contract).
    """
    try:
        inferred = check_model(model)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise DyconvError(f"the graph fails the ONNX checker: {lines[0][:300] if lines else type(exc).__name__}") \
            from exc
    check_contract_shapes(inferred)
    return inferred


def check_contract_shapes(inferred: onnx.ModelProto) -> None:
    """Check the input shapes of every contract node of a shape-inferred graph against the contract.

    Known sizes must agree: A's K (and M for rank 3) with W, B = [K, M], S = [N, kH, kW] with W's
    kernel, X's channels = W's C/group times ``group``, M divisible by ``group``. Symbolic sizes (the
    batch) are not compared.
    """
    shapes = {t.name: list(t.dims) for t in inferred.graph.initializer}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in info.type.tensor_type.shape.dim]
    for node in contract_nodes(inferred):
        problem = _contract_problem(node, [shapes.get(name) if name else None for name in node.input])
        if problem:
            raise DyconvError(f"node {node.name or node.op_type} breaks the dyconv::DynamicConv2d contract: {problem} "
                              f"(contract: {_CONTRACT})")


def _contract_problem(node: onnx.NodeProto, inputs: list) -> str | None:
    """The first way ``node``'s input shapes (lists of ints or None; None when unknown) break the contract."""
    x, a, w, b, s = (inputs + [None] * 5)[:5]
    group = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
    for label, shape, ranks in (("X", x, (4,)), ("A", a, (2, 3)), ("W", w, (5,)), ("B", b, (2,)), ("S", s, (3,))):
        if shape is not None and len(shape) not in ranks:
            return f"{label} has rank {len(shape)} ({_dims(shape)}), expected {' or '.join(map(str, ranks))}"
    if w is None:
        return "W (the expert kernels) has no known shape"
    k, m, per_group = w[0], w[1], w[2]
    expected = {"A": [None, k] + ([m] if a is not None and len(a) == 3 else []), "B": [k, m], "S": [None, *w[3:]]}
    for label, shape in (("A", a), ("B", b), ("S", s)):
        if shape is not None and any(e is not None and d is not None and d != e for d, e in zip(shape, expected[label])):
            return f"{label} is {_dims(shape)} but W {_dims(w)} needs {_dims(expected[label])}"
    if m % group:
        return f"W {_dims(w)} has M = {m} output channels, not divisible by group {group}"
    if x is not None and x[1] is not None and x[1] != per_group * group:
        return f"X is {_dims(x)} but W {_dims(w)} with group {group} needs C = {per_group * group}"
    return None


def _dims(shape) -> str:
    """``[N, 4, ?]``: an unknown size shows as N in front (the batch), else as ?."""
    return "[" + ", ".join(str(d) if d is not None else "?" if i else "N" for i, d in enumerate(shape)) + "]"

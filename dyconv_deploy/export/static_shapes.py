"""Optimise a TorchScript export into the graph the dynamo exporter writes: fixed sizes as constants.

The TorchScript exporter computes every ``x.shape[i]`` a forward() reads at run time
(``Gather(Shape(x), i)``), even where the size is fixed, and builds view shapes with ``Concat``;
dynamo writes constants, and ``-1`` for the one free (batch) dimension of a view. :func:`optimize`
runs onnxscript's optimizer (the one the dynamo exporter runs; :func:`~.fast_optimizer.fast_matching`
drops its wasted matching) around two exact rewrites:

1. before it, ``Gather(Shape(x), i)`` with a constant scalar ``i >= 0`` becomes the constant
   ``x.shape[i]`` where shape inference fixed that dim (the optimizer folds shape slices, not
   scalar gathers), and the optimizer folds the arithmetic on it;
2. after it, ``Reshape(data, Concat(pieces))`` where every piece is a constant but one, a single
   run-time value ``n``, and no constant is 0, gets a constant shape: ``-1`` for ``n`` and
   ``allowzero=1`` (no 0 in the shape, so the same meaning). A constant ``-1`` (``x.view(n, -1)``)
   is replaced by its value first, which is fixed when ``n`` reads the one free dim of ``data``
   (the same shape-inference symbol) and the others are fixed. Exact: wherever the original
   reshape runs, ``numel(data)`` is the product of the shape, so ``-1`` resolves to ``n``.
   Shape inference runs again after each round of rewrites (on a copy without the float
   weights: milliseconds), since a fixed view lets it follow the batch symbol one layer further.
"""

from typing import Optional

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper
from onnx_ir.passes.common import (DeduplicateInitializersPass, IdentityEliminationPass,
                                   LiftConstantsToInitializersPass, RemoveUnusedNodesPass)

from dyconv_deploy.export.fast_optimizer import fast_matching

Dims = tuple  # a value's inferred dims: int (fixed), str (a shape-inference symbol) or None (unknown)


def optimize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The optimised graph of ``proto`` (a TorchScript export), as a new ``ModelProto``."""
    import onnxscript

    dims = _inferred_dims(proto)
    model = ir.from_proto(proto)
    # Constants and Identities are a third of a TorchScript graph: dropped first, they halve the optimizer's time.
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    IdentityEliminationPass()(model)
    _fixed_sizes_as_constants(model.graph, dims)
    with fast_matching():
        onnxscript.optimizer.optimize(model)
    optimized = ir.to_proto(model)
    _view_shapes_as_constants(optimized)
    model = ir.from_proto(optimized)
    RemoveUnusedNodesPass()(model)
    DeduplicateInitializersPass()(model)
    return ir.to_proto(model)


def _fixed_sizes_as_constants(graph: ir.Graph, dims: dict[str, Dims]) -> None:
    """Rewrite 1: ``Gather(Shape(x), i)`` -> the constant ``x.shape[i]`` where shape inference fixed it."""
    for node in list(graph):
        index = _scalar_lookup(node)
        source = None if index is None else dims.get(node.inputs[0].producer().inputs[0].name)
        if source is None or index >= len(source) or not isinstance(source[index], int):
            continue
        size = ir.Value(name=f"{node.outputs[0].name}_fixed", const_value=ir.tensor(np.array(source[index])))
        size.shape, size.type = ir.Shape([]), ir.TensorType(ir.DataType.INT64)
        graph.register_initializer(size)
        ir.convenience.replace_all_uses_with(node.outputs[0], size)


def _scalar_lookup(node: ir.Node) -> Optional[int]:
    """``i`` when ``node`` is ``Gather(Shape(x), i)`` (axis 0, no start/end on Shape) with constant ``i >= 0``."""
    if node.op_type != "Gather" or node.domain != "" or node.attributes.get_int("axis", 0) != 0:
        return None
    shape = node.inputs[0].producer()
    if shape is None or shape.op_type != "Shape" or shape.domain != "" or shape.attributes:
        return None
    index = ir.convenience.get_const_tensor(node.inputs[1])
    if index is None or index.shape.dims != () or node.outputs[0].is_graph_output():
        return None
    value = int(index.numpy())
    return value if value >= 0 else None


def _view_shapes_as_constants(proto: onnx.ModelProto) -> None:
    """Rewrite 2, in rounds until none applies: a Reshape to ``Concat(constants, n, constants)`` -> a constant."""
    graph = proto.graph
    while True:
        dims = _inferred_dims(proto)
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer
                     if t.data_type == onnx.TensorProto.INT64}
        producers = {name: node for node in graph.node for name in node.output}
        fixed = [_fix_view(node, producers, constants, dims, graph) for node in graph.node
                 if node.op_type == "Reshape" and node.domain == ""]
        if not any(fixed):
            return


def _fix_view(node: onnx.NodeProto, producers: dict, constants: dict, dims: dict, graph: onnx.GraphProto) -> bool:
    concat = producers.get(node.input[1])
    if concat is None or concat.op_type != "Concat" or concat.domain != "":
        return False
    pieces = [constants.get(name) for name in concat.input]
    free = [name for name, piece in zip(concat.input, pieces) if piece is None]
    if len(free) != 1 or dims.get(free[0]) != (1,):
        return False
    shape = np.concatenate([np.array([_FREE]) if piece is None else piece.reshape(-1) for piece in pieces])
    if (shape == 0).any() or (shape < _FREE).any() or (shape == -1).sum() > 1:
        return False
    if (shape == -1).any():  # x.view(n, -1): the -1 is fixed when n is the data's only free dim
        remainder = _fixed_remainder(dims.get(node.input[0]), _dim_read(free[0], producers, constants, dims), shape)
        if remainder is None:
            return False
        shape[shape == -1] = remainder
    shape[shape == _FREE] = -1
    name = f"{node.output[0]}_shape"
    graph.initializer.append(numpy_helper.from_array(shape.astype(np.int64), name))
    node.input[1] = name
    kept = [a for a in node.attribute if a.name != "allowzero"]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute("allowzero", 1)])
    return True


_FREE = -2  # placeholder of the run-time piece while the shape is assembled


def _dim_read(name: str, producers: dict, constants: dict, dims: dict) -> Optional[str]:
    """The symbol of the dim ``i`` of ``x`` that ``name`` holds (``Gather(Shape(x), i)`` or ``Shape(x, i, i+1)``,
    through Squeeze/Unsqueeze), else None."""
    node = producers.get(name)
    while node is not None and node.op_type in ("Squeeze", "Unsqueeze") and node.domain == "":
        node = producers.get(node.input[0])
    if node is None or node.domain != "":
        return None
    if node.op_type == "Gather" and _ints(node).get("axis", 0) == 0:
        index, shape = constants.get(node.input[1]), producers.get(node.input[0])
        if index is None or index.shape != () or shape is None or shape.op_type != "Shape" or shape.attribute:
            return None
        position = int(index)
    elif node.op_type == "Shape" and _ints(node).get("end") == _ints(node).get("start", 0) + 1:
        shape, position = node, _ints(node).get("start", 0)
    else:
        return None
    source = dims.get(shape.input[0])
    if source is None or not 0 <= position < len(source):
        return None
    return source[position] if isinstance(source[position], str) else None


def _ints(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}


def _fixed_remainder(data: Optional[Dims], symbol: Optional[str], shape: np.ndarray) -> Optional[int]:
    """The value of the ``-1`` in ``shape`` when ``data`` has one free dim, ``symbol`` (the free piece), and
    fixed others; only equal symbols are proven equal sizes."""
    if symbol is None or data is None:
        return None
    free = [d for d in data if not isinstance(d, int)]
    if free != [symbol]:
        return None
    fixed = int(np.prod([d for d in data if isinstance(d, int)]))
    known = int(np.prod(shape[shape > 0]))
    return fixed // known if fixed % known == 0 else None


def _inferred_dims(proto: onnx.ModelProto) -> dict[str, Dims]:
    """Every value's dims by ONNX shape inference (with data propagation) on a copy whose float weights are
    typed graph inputs: the same shapes, without serialising the weights."""
    light = onnx.ModelProto(ir_version=proto.ir_version)
    light.opset_import.extend(proto.opset_import)
    graph = light.graph
    graph.node.extend(proto.graph.node)
    graph.input.extend(proto.graph.input)
    graph.output.extend(onnx.ValueInfoProto(name=o.name) for o in proto.graph.output)
    inputs = {v.name for v in proto.graph.input}
    for tensor in proto.graph.initializer:
        if tensor.data_type == onnx.TensorProto.INT64:
            graph.initializer.append(tensor)
        elif tensor.name not in inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=True).graph
    dims = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        if value.type.tensor_type.HasField("shape"):
            dims[value.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                     for d in value.type.tensor_type.shape.dim)
    for tensor in proto.graph.initializer:
        dims.setdefault(tensor.name, tuple(tensor.dims))
    return dims

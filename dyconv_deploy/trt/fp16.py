"""ONNX fp32 -> fp16 for strongly typed TensorRT builds, keeping the overflow-prone parts in fp32.

``build-engine`` builds strongly typed networks on TensorRT 10 and 11, so precision follows the
ONNX tensor types. This pass makes every float computation fp16 except

* the graph inputs and outputs (Casts at the boundary, so callers still feed fp32),
* each ``dyconv::DynamicConv2d``'s attention branch: the nodes that feed its ``A`` (and
  ``S``) input but not its ``X`` input (GAP -> FC -> softmax(z/τ); tiny, and the temperature
  division and softmax are where fp16 overflows or underflows),
* ops in ``keep_fp32_ops`` anywhere (Softmax, ReduceMean, GlobalAveragePool, ... by default),
* inputs that ONNX requires to be fp32 whatever the data type (Resize's roi and scales).

Float initializers and Constants whose consumers are all fp16 become fp16 (clipped to the
fp16 range); Casts are inserted wherever a tensor's producer and consumer precisions differ.
Control-flow subgraphs (If/Loop/Scan) are not supported.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.ops.onnx_schema import register_schema

KEEP_FP32_OPS = frozenset({"Softmax", "LogSoftmax", "ReduceMean", "GlobalAveragePool", "Exp", "Pow"})
# (op_type, input index) that stay fp32 whatever the node's precision.
_FP32_INPUTS = frozenset({("Resize", 1), ("Resize", 2)})
# Ops that accept any float type on their inputs (no Cast needed).
_ANY_FLOAT_INPUT_OPS = frozenset({"Cast", "Shape", "Size"})
_FP16_MAX = float(np.finfo(np.float16).max)
_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16


def convert_to_fp16(model: onnx.ModelProto, keep_fp32_ops=KEEP_FP32_OPS) -> onnx.ModelProto:
    """Return an fp16 copy of ``model`` with fp32 I/O (see the module docstring for what stays fp32)."""
    register_schema()
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise DyconvError("fp16 conversion does not handle control-flow subgraphs (If/Loop/Scan)")
    float_tensors = _float_tensors(graph)
    fp32_nodes = _attention_nodes(graph) | {i for i, n in enumerate(graph.node) if n.op_type in keep_fp32_ops}
    dtype = _convert_constants(graph, float_tensors, fp32_nodes)
    for position, node in enumerate(graph.node):
        if node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if position not in fp32_nodes and to.i == _FLOAT:
                to.i = _HALF
            dtype[node.output[0]] = to.i
        elif node.op_type != "Constant":
            for out in node.output:
                if out in float_tensors:
                    dtype[out] = _FLOAT if position in fp32_nodes else _HALF
    _keep_outputs_fp32(graph, dtype)
    _insert_casts(graph, fp32_nodes, dtype)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(_toposorted(model), strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _float_tensors(graph: onnx.GraphProto) -> set[str]:
    typed = [*graph.input, *graph.output, *graph.value_info]
    names = {v.name for v in typed if v.type.tensor_type.elem_type == _FLOAT}
    return names | {t.name for t in graph.initializer if t.data_type == _FLOAT}


def _attention_nodes(graph: onnx.GraphProto) -> set[int]:
    """Positions of the nodes that feed a DynamicConv2d's A/S inputs but not its X input."""
    producer = {out: position for position, node in enumerate(graph.node) for out in node.output}

    def ancestors(tensor: str) -> set[int]:
        seen, stack = set(), [tensor]
        while stack:
            position = producer.get(stack.pop())
            if position is not None and position not in seen:
                seen.add(position)
                stack.extend(graph.node[position].input)
        return seen

    branch = set()
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            routing = set().union(*(ancestors(node.input[i]) for i in (1, 4) if len(node.input) > i and node.input[i]))
            branch |= routing - ancestors(node.input[0])
    return branch


def _wants(graph: onnx.GraphProto, position: int, index: int, fp32_nodes: set[int]) -> int | None:
    """The float type node ``position`` needs on its input ``index`` (None: any)."""
    op_type = graph.node[position].op_type
    if op_type in _ANY_FLOAT_INPUT_OPS:
        return None
    if position in fp32_nodes or (op_type, index) in _FP32_INPUTS:
        return _FLOAT
    return _HALF


def _convert_constants(graph: onnx.GraphProto, float_tensors: set[str], fp32_nodes: set[int]) -> dict[str, int]:
    """Make float initializers/Constants fp16 when every consumer wants fp16; returns tensor -> dtype."""
    consumers: dict[str, list[tuple[int, int]]] = {}
    for position, node in enumerate(graph.node):
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((position, index))
    graph_outputs = {o.name for o in graph.output}

    def all_fp16(name: str) -> bool:
        uses = consumers.get(name, [])
        return bool(uses) and name not in graph_outputs and all(
            _wants(graph, position, index, fp32_nodes) == _HALF for position, index in uses)

    dtype = {v.name: _FLOAT for v in graph.input if v.name in float_tensors}
    for init in graph.initializer:
        if init.data_type == _FLOAT:
            converted = all_fp16(init.name)
            if converted:
                init.CopyFrom(_half_tensor(init))
            dtype[init.name] = _HALF if converted else _FLOAT
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in float_tensors:
            value = next((a for a in node.attribute if a.name == "value"), None)
            converted = value is not None and all_fp16(node.output[0])
            if converted:
                value.t.CopyFrom(_half_tensor(value.t))
            dtype[node.output[0]] = _HALF if converted else _FLOAT
    return dtype


def _half_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    array = np.clip(numpy_helper.to_array(tensor), -_FP16_MAX, _FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(array, tensor.name)


def _keep_outputs_fp32(graph: onnx.GraphProto, dtype: dict[str, int]) -> None:
    """Rename each fp16-produced graph output ``y`` to ``y_fp16`` and add ``Cast(y_fp16) -> y``."""
    for output in graph.output:
        name = output.name
        if dtype.get(name) != _HALF:
            continue
        internal = f"{name}_fp16"
        for node in graph.node:
            node.output[:] = [internal if o == name else o for o in node.output]
            node.input[:] = [internal if i == name else i for i in node.input]
        graph.node.append(helper.make_node("Cast", [internal], [name], to=_FLOAT, name=f"{name}_to_fp32"))
        dtype[internal], dtype[name] = _HALF, _FLOAT


def _insert_casts(graph: onnx.GraphProto, fp32_nodes: set[int], dtype: dict[str, int]) -> None:
    """Give every float input the precision its consumer wants, one Cast per (tensor, type)."""
    casts: dict[tuple[str, int], str] = {}
    for position in range(len(graph.node)):
        node = graph.node[position]
        for index, name in enumerate(node.input):
            if dtype.get(name) not in (_FLOAT, _HALF):
                continue
            want = _wants(graph, position, index, fp32_nodes)
            if want is None or dtype[name] == want:
                continue
            key = (name, want)
            if key not in casts:
                suffix = "fp16" if want == _HALF else "fp32"
                casts[key] = f"{name}_as_{suffix}"
                graph.node.append(helper.make_node("Cast", [name], [casts[key]], to=want,
                                                   name=f"{name}_cast_{suffix}"))
            node.input[index] = casts[key]


def _toposorted(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.toposort()
    return gs.export_onnx(graph)

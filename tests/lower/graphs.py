"""Hand-built ONNX graphs that follow the ``dyconv::DynamicConv2d`` contract (no exporter involved).

:func:`contract_model` builds ``X -> DynamicConv2d -> [per-channel affine] -> Y`` with the
attention computed in the graph from its own inputs (``softmax`` over K, or ``sigmoid`` for
unnormalised routing) and ``S = sigmoid(spatial logits)``; :func:`odconv_model` adds ODConv's
channel and filter scales around the node. The lowering passes must work on any conforming
graph, not only on what our exporter emits.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE, output_size
from dyconv_deploy.ops.onnx_reference import REFERENCE_OPS
from dyconv_deploy.tolerance import TOLERANCES, compare

BATCH = "batch"


@dataclass(frozen=True)
class Node:
    """One contract node: ``X [N, c, size, size]``, ``W [experts, m, c/groups, kernel, kernel]``."""

    name: str
    c: int = 4
    m: int = 6
    experts: int = 4
    kernel: int = 3
    size: int = 7
    strides: tuple = (1, 1)
    pads: tuple = (1, 1, 1, 1)  # top, left, bottom, right
    dilations: tuple = (1, 1)
    groups: int = 1
    bias: bool = True
    per_channel: bool = False  # attention [N, K, M] (DyNet)
    spatial: bool = False  # S [N, k, k] (ODConv)
    routing: str = "Softmax"  # or "Sigmoid" (unnormalised, CondConv)

    def __str__(self) -> str:
        return self.name

    @property
    def attention_shape(self) -> list:
        return [BATCH, self.experts, self.m] if self.per_channel else [BATCH, self.experts]


NODES = [
    Node("1x1", kernel=1, pads=(0, 0, 0, 0)),
    Node("1x1-stride2-nobias-K1", kernel=1, pads=(0, 0, 0, 0), strides=(2, 2), bias=False, experts=1),
    Node("3x3"),
    Node("3x3-stride2-asym-pads", strides=(2, 2), pads=(1, 0, 0, 1), size=8),
    Node("3x3-dilated-groups2-dynet", dilations=(2, 2), pads=(2, 2, 2, 2), groups=2, per_channel=True),
    Node("5x5-depthwise-multiplier", c=4, m=8, kernel=5, pads=(2, 2, 2, 2), groups=4, experts=2),
    Node("3x3-depthwise-dynet-stride2", c=6, m=6, groups=6, per_channel=True, strides=(2, 2), size=8),
    Node("3x3-spatial", spatial=True, routing="Sigmoid"),
    Node("3x3-depthwise-spatial-stride2", c=6, m=6, groups=6, spatial=True, strides=(2, 2), pads=(0, 1, 1, 0)),
    Node("5x5-groups2-spatial-dynet-nobias", kernel=5, pads=(2, 1, 2, 3), groups=2, spatial=True, per_channel=True,
         bias=False),
]


def _value(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def contract_model(node: Node, affine: str = "", seed: int = 0) -> onnx.ModelProto:
    """``Y = affine(DynamicConv2d(X, routing(logits), W, B, sigmoid(spatial_logits)))``, dynamic batch.

    affine: "" (none), "bn" (BatchNormalization) or "mul_add" (per-channel Mul then Add constants).
    """
    rng = np.random.default_rng(seed)
    k = node.kernel
    initializers = [_constant(rng.standard_normal((node.experts, node.m, node.c // node.groups, k, k)) * 0.3, "W")]
    inputs = [_value("X", [BATCH, node.c, node.size, node.size]), _value("logits", node.attention_shape)]
    nodes = [helper.make_node(node.routing, ["logits"], ["A"], **({"axis": 1} if node.routing == "Softmax" else {}))]
    conv_inputs = ["X", "A", "W", "", ""]
    if node.bias:
        initializers.append(_constant(rng.standard_normal((node.experts, node.m)), "B"))
        conv_inputs[3] = "B"
    if node.spatial:
        inputs.append(_value("spatial_logits", [BATCH, k, k]))
        nodes.append(helper.make_node("Sigmoid", ["spatial_logits"], ["S"]))
        conv_inputs[4] = "S"
    while not conv_inputs[-1]:
        conv_inputs.pop()
    nodes.append(helper.make_node(OP_TYPE, conv_inputs, ["conv" if affine else "Y"], domain=DOMAIN,
                                  strides=list(node.strides), pads=list(node.pads), dilations=list(node.dilations),
                                  group=node.groups))
    if affine == "bn":
        stats = (rng.uniform(0.5, 1.5, node.m), rng.standard_normal(node.m), rng.standard_normal(node.m),
                 rng.uniform(0.5, 1.5, node.m))
        initializers += [_constant(v, name) for v, name in zip(stats, ("gamma", "beta", "mean", "var"))]
        nodes.append(helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["Y"],
                                      epsilon=1e-3))
    elif affine == "mul_add":
        initializers += [_constant(rng.uniform(0.5, 1.5, (node.m, 1, 1)), "scale"),
                         _constant(rng.standard_normal((1, node.m, 1, 1)), "shift")]
        nodes += [helper.make_node("Mul", ["conv", "scale"], ["scaled"]),
                  helper.make_node("Add", ["shift", "scaled"], ["Y"])]
    ho = output_size(node.size, node.pads[0], node.pads[2], k, node.strides[0], node.dilations[0])
    wo = output_size(node.size, node.pads[1], node.pads[3], k, node.strides[1], node.dilations[1])
    graph = helper.make_graph(nodes, node.name, inputs, [_value("Y", [BATCH, node.m, ho, wo])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def odconv_model(scale_after_from_output: bool = False, seed: int = 0) -> onnx.ModelProto:
    """ODConv as exported: ``Y = DynamicConv2d(X · channel, A, W, S=spatial) · filter`` where channel,
    filter, A and S come from one squeeze of X; with ``scale_after_from_output`` the scale after the
    node is an SE block computed from the node's own output instead (not an attention scale)."""
    rng = np.random.default_rng(seed)
    c, m, k, experts, hidden = 4, 6, 3, 2, 3
    initializers = [_constant(rng.standard_normal((experts, m, c, k, k)) * 0.3, "W")]
    heads = {"channel": c, "filter": m, "kernel": experts, "spatial": k * k}
    initializers += [_constant(rng.standard_normal((size, hidden, 1, 1)), f"{head}_w") for head, size in heads.items()]
    initializers += [_constant(rng.standard_normal((hidden, c, 1, 1)), "squeeze_w"),
                     _constant(rng.standard_normal((m, m, 1, 1)), "se_w"),
                     numpy_helper.from_array(np.array([0, experts]), "kernel_shape"),
                     numpy_helper.from_array(np.array([0, k, k]), "spatial_shape")]
    nodes = [helper.make_node("GlobalAveragePool", ["X"], ["pooled"]),
             helper.make_node("Conv", ["pooled", "squeeze_w"], ["squeezed"]),
             helper.make_node("Relu", ["squeezed"], ["hidden"])]
    for head in heads:
        nodes.append(helper.make_node("Conv", ["hidden", f"{head}_w"], [f"{head}_logits"]))
    nodes += [helper.make_node("Sigmoid", ["channel_logits"], ["channel"]),
              helper.make_node("Sigmoid", ["filter_logits"], ["filter"]),
              helper.make_node("Reshape", ["kernel_logits", "kernel_shape"], ["kernel_flat"]),
              helper.make_node("Softmax", ["kernel_flat"], ["A"], axis=1),
              helper.make_node("Reshape", ["spatial_logits", "spatial_shape"], ["spatial_flat"]),
              helper.make_node("Sigmoid", ["spatial_flat"], ["S"]),
              helper.make_node("Mul", ["X", "channel"], ["X_scaled"]),
              helper.make_node(OP_TYPE, ["X_scaled", "A", "W", "", "S"], ["conv"], domain=DOMAIN, pads=[1, 1, 1, 1])]
    if scale_after_from_output:
        nodes += [helper.make_node("GlobalAveragePool", ["conv"], ["conv_pooled"]),
                  helper.make_node("Conv", ["conv_pooled", "se_w"], ["se_logits"]),
                  helper.make_node("Sigmoid", ["se_logits"], ["se"]),
                  helper.make_node("Mul", ["conv", "se"], ["Y"])]
    else:
        nodes.append(helper.make_node("Mul", ["filter", "conv"], ["Y"]))
    graph = helper.make_graph(nodes, "odconv", [_value("X", [BATCH, c, 6, 6])], [_value("Y", [BATCH, m, 6, 6])],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def _constant(values, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def as_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a float32 graph in float16: initializers, graph inputs and outputs (no value_info kept)."""
    half = onnx.ModelProto()
    half.CopyFrom(model)
    for tensor in half.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in [*half.graph.input, *half.graph.output]:
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del half.graph.value_info[:]
    return half


def random_feeds(model: onnx.ModelProto, batch: int, seed: int = 1) -> dict:
    """Random float32 values for every graph input, with ``batch`` for the symbolic dims."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run_reference(model: onnx.ModelProto, feeds: dict) -> list:
    """Outputs of ``onnx.reference`` with the contract kernel."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)


def run_onnxruntime(model: onnx.ModelProto, feeds: dict) -> list:
    """Outputs of ONNX Runtime (CPU) for the graph inputs ``model`` still has."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {name: value for name, value in feeds.items() if name in names})


def assert_matches(actual: list, expected: list) -> None:
    """Every output within ``TOLERANCES["fp32"]``."""
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        comparison = compare(a, e, TOLERANCES["fp32"], name=f"output {index}")
        assert comparison.passed, str(comparison)


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def batch_dim(model: onnx.ModelProto):
    """Dim 0 of the first graph input: an int when static, the symbol's name when dynamic."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else dim.dim_param

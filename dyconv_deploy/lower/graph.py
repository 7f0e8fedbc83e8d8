"""What every lowering pass shares: load a graph, read its contract nodes, emit nodes, finish.

A pass is ``ModelProto -> ModelProto`` in three steps: 1 :func:`load` (shape inference, then
onnx-graphsurgeon), 2 rewrite each :class:`ContractNode` with an :class:`Emitter`, 3
:func:`finish` (cleanup, toposort, ``onnx.checker``, strict shape inference). Failures are
:func:`stage_error`\\ s naming the pass and the step.
"""

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.settings import DEFAULT_OPSET
from dyconv_deploy.io.onnx_file import check_and_infer
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.ops.onnx_schema import register_schema

log = logging.getLogger(__name__)

MIN_OPSET = 13  # ReduceSum with an axes input, per-axis Softmax
STEPS = 3


def stage_error(strategy: str, step: int, message: str, next_step: str) -> DyconvError:
    """``lower[<strategy>] step i/3: <message> Next: <next_step>``."""
    return DyconvError(f"lower[{strategy}] step {step}/{STEPS}: {message} Next: {next_step}")


def load(model: onnx.ModelProto, strategy: str) -> gs.Graph:
    """Step 1: infer shapes (the contract schema registered) and import the graph."""
    register_schema()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise stage_error(strategy, 1, f"the graph uses ONNX opset {opset}; lowering needs >= {MIN_OPSET}.",
                          f"re-export with --opset {DEFAULT_OPSET}.")
    try:
        model = check_and_infer(model, check=False)
    except onnx.shape_inference.InferenceError as exc:
        raise stage_error(strategy, 1, f"shape inference failed on the input graph ({exc}).",
                          "check it with onnx.checker.check_model(model, full_check=True).") from exc
    return gs.import_onnx(model)


def with_static_batch(model: onnx.ModelProto, batch: int, strategy: str) -> onnx.ModelProto:
    """A copy whose graph inputs (and the outputs sharing their batch symbol) have dim 0 = ``batch``."""
    if batch < 1:
        raise stage_error(strategy, 1, f"the static batch must be >= 1, got {batch}.", "pass static_batch >= 1.")
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {t.name for t in fixed.graph.initializer}
    symbols = set()
    for value in fixed.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in initializers or not dims:
            continue
        if dims[0].HasField("dim_value"):
            if dims[0].dim_value != batch:
                raise stage_error(strategy, 1, f"input '{value.name}' has the fixed batch {dims[0].dim_value}, "
                                  f"not {batch}.", f"pass static_batch={dims[0].dim_value} or re-export.")
            continue
        symbols.add(dims[0].dim_param)
        dims[0].dim_value = batch
    for value in fixed.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value") and dims[0].dim_param in symbols:
            dims[0].dim_value = batch
    del fixed.graph.value_info[:]
    return fixed


def finish(graph: gs.Graph, source: onnx.ModelProto, strategy: str) -> onnx.ModelProto:
    """Step 3: drop dead nodes and inputs, sort, export, then checker and strict shape inference."""
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    model = gs.export_onnx(graph)
    model.ir_version = source.ir_version
    used_domains = {node.domain for node in model.graph.node} | {"", "ai.onnx"}
    kept = [o for o in model.opset_import if o.domain in used_domains]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    try:
        return check_and_infer(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise stage_error(strategy, 3, f"the lowered graph is invalid ({exc}).",
                          "report a bug with the input ONNX file attached.") from exc


@dataclass
class ContractNode:
    """One ``dyconv::DynamicConv2d`` node, read per the contract.

    weight: ``[K, M, C/G, kH, kW]``; bias: ``[K, M]`` or None; spatial: the ``[N, kH, kW]``
    tensor or None; pads in ONNX Conv order (top, left, bottom, right), as in the contract.
    """

    node: gs.Node
    y: gs.Variable
    x: gs.Tensor
    attention: gs.Tensor
    weight: np.ndarray
    bias: Optional[np.ndarray]
    spatial: Optional[gs.Tensor]
    strides: list
    pads: list
    dilations: list
    group: int

    @property
    def experts(self) -> int:
        return self.weight.shape[0]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[2] * self.group

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.weight.shape[3], self.weight.shape[4]

    @property
    def attention_rank(self) -> int:
        return len(self.attention.shape)

    def conv_attrs(self, **overrides) -> dict:
        """Attributes of an ONNX Conv with this node's geometry."""
        return {"strides": self.strides, "pads": self.pads, "dilations": self.dilations, "group": self.group,
                **overrides}


def is_contract_node(node: gs.Node) -> bool:
    return node.op == OP_TYPE and node.domain == DOMAIN


def contract_nodes(graph: gs.Graph, strategy: str) -> list[ContractNode]:
    """Step 2's worklist: every ``DynamicConv2d`` node; W (and B) must be initializers."""
    found = []
    for node in filter(is_contract_node, graph.nodes):
        padded = list(node.inputs) + [gs.Variable.empty()] * (5 - len(node.inputs))
        x, attention, weight, bias, spatial = (t if t.name else None for t in padded)
        where = f"node '{node.name or node.outputs[0].name}'"
        for label, tensor in (("weight W", weight), ("bias B", bias)):
            if tensor is not None and not isinstance(tensor, gs.Constant):
                raise stage_error(strategy, 2, f"{where}: the {label} is computed in the graph; lowering needs "
                                  "it as an initializer.", "export the model with constant expert parameters.")
        if attention.shape is None or len(attention.shape) not in (2, 3):
            raise stage_error(strategy, 2, f"{where}: the attention A has shape {attention.shape}, expected rank "
                              "2 or 3.", "re-export the model so shapes are known (opset >= 13).")
        found.append(ContractNode(
            node, node.outputs[0], x, attention, np.asarray(weight.values),
            None if bias is None else np.asarray(bias.values), spatial,
            list(node.attrs.get("strides", [1, 1])), list(node.attrs.get("pads", [0, 0, 0, 0])),
            list(node.attrs.get("dilations", [1, 1])), int(node.attrs.get("group", 1))))
    if not found:
        log.warning("lower[%s]: the graph has no %s::%s node; nothing to lower", strategy, DOMAIN, OP_TYPE)
    return found


class Emitter:
    """Adds nodes and constants to ``graph``; every name starts with ``prefix`` (unique per rewrite)."""

    def __init__(self, graph: gs.Graph, prefix: str, dtype):
        self.graph = graph
        self.prefix = prefix
        self.dtype = dtype

    def const(self, name: str, values) -> gs.Constant:
        """A float constant in the rewritten node's dtype."""
        return gs.Constant(f"{self.prefix}/{name}", np.ascontiguousarray(values, dtype=self.dtype))

    def ints(self, name: str, values) -> gs.Constant:
        """An int64 constant (shapes, axes)."""
        return gs.Constant(f"{self.prefix}/{name}", np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list, name: str, output: Optional[gs.Variable] = None, **attrs) -> gs.Variable:
        """Append ``op_type(inputs)``; returns its output (a new tensor unless ``output`` is given)."""
        output = output if output is not None else gs.Variable(f"{self.prefix}/{name}")
        self.graph.nodes.append(gs.Node(op_type, f"{self.prefix}/{name}", attrs, list(inputs), [output]))
        return output

    def reshape(self, tensor: gs.Tensor, shape, name: str, output: Optional[gs.Variable] = None) -> gs.Variable:
        """``Reshape`` to a constant shape (0 copies the input dim, -1 is inferred)."""
        return self.op("Reshape", [tensor, self.ints(f"{name}_shape", shape)], name, output)


def emitter_for(graph: gs.Graph, contract: ContractNode, strategy: str) -> Emitter:
    """An emitter named after the node's output tensor, in the dtype of its weights."""
    return Emitter(graph, f"{contract.y.name}/{strategy}", contract.weight.dtype)


def detach_output(node: gs.Node) -> gs.Variable:
    """Take ``node``'s output so an emitted op can compute it; ``node`` is left dead for cleanup."""
    output = node.outputs[0]
    node.outputs.clear()
    return output


def producer(tensor: gs.Tensor) -> Optional[gs.Node]:
    """The node computing ``tensor`` (None for graph inputs and initializers)."""
    return tensor.inputs[0] if tensor.inputs else None


def ancestors(tensor: gs.Tensor) -> set[int]:
    """``id`` of every node ``tensor`` depends on."""
    seen: set[int] = set()
    stack = [tensor]
    while stack:
        node = producer(stack.pop())
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            stack.extend(node.inputs)
    return seen


def sole_consumer(tensor: gs.Tensor, graph: gs.Graph) -> Optional[gs.Node]:
    """The only node reading ``tensor``, or None (several readers, or a graph output)."""
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    return tensor.outputs[0]


def constant_values(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The values of an initializer or of a ``Constant`` node's output, else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        return np.asarray(node.attrs["value"].values)
    return None

"""Whether two ONNX graphs are the same computation, whatever their value names: the exporter tests' yardstick.

:func:`graph_signature` reads a graph as a list, in graph order, of per-node entries: domain,
op type, attributes (with the schema's defaults filled in, since exporters differ in writing them
out), and for each input where it comes from: another node's output (node index, output index), a
graph input (its name), or an initializer (its values; equal within float32 rounding, since the
exporters fold e.g. a BatchNorm into the Conv before it in different orders of operations). Equal
signatures and equal graph inputs/outputs mean the same function with the same weights.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from dyconv_deploy.ops.onnx_schema import register_schema


@dataclass(eq=False)
class Weights:
    """An initializer in a signature: equal to another of the same shape and dtype within float32 rounding."""

    values: np.ndarray

    def __eq__(self, other) -> bool:
        return (isinstance(other, Weights) and self.values.shape == other.values.shape
                and self.values.dtype == other.values.dtype
                and np.allclose(self.values, other.values, rtol=1e-6, atol=1e-7))

    def __repr__(self) -> str:
        return f"Weights({self.values.dtype}{list(self.values.shape)})"


def graph_signature(proto: onnx.ModelProto) -> list[tuple]:
    register_schema()
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {}
    signature = []
    for index, node in enumerate(proto.graph.node):
        sources = []
        for name in node.input:
            if name in producers:
                sources.append(producers[name])
            elif name in initializers:
                sources.append(Weights(initializers[name]))
            else:
                sources.append(name)  # a graph input, or "" for an absent optional input
        signature.append((node.domain, node.op_type, _attributes(node, opsets), tuple(sources)))
        producers.update((name, (index, position)) for position, name in enumerate(node.output))
    outputs = [producers.get(o.name, o.name) for o in proto.graph.output]
    return signature + [("graph outputs", tuple(outputs))]


def _attributes(node: onnx.NodeProto, opsets: dict[str, int]) -> tuple:
    domain = node.domain or "ai.onnx"
    schema = onnx.defs.get_schema(node.op_type, opsets[domain], node.domain)
    values = {name: onnx.helper.get_attribute_value(a.default_value)
              for name, a in schema.attributes.items() if a.default_value.name}
    values.update((a.name, onnx.helper.get_attribute_value(a)) for a in node.attribute)
    return tuple(sorted((name, repr(value)) for name, value in values.items()))


def io_types(proto: onnx.ModelProto) -> list[str]:
    """Graph inputs and outputs: name, element type and shape (``batch`` for a free batch)."""
    return [f"{v.name}: {v.type.tensor_type}" for v in [*proto.graph.input, *proto.graph.output]]


def assert_same_graph(actual: onnx.ModelProto, expected: onnx.ModelProto) -> None:
    assert io_types(actual) == io_types(expected)
    signatures = graph_signature(actual), graph_signature(expected)
    assert len(signatures[0]) == len(signatures[1]), "node counts differ"
    for index, (a, e) in enumerate(zip(*signatures)):
        assert a == e, f"node {index} differs:\n  {a}\n  {e}"

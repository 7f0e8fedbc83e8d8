"""check_contract_shapes: every way a dyconv node's input shapes can break the contract is named."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.graph_check import check_contract_shapes
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE

W = (4, 8, 2, 3, 3)  # K=4 experts, M=8 outputs, C/group=2, 3x3 kernel


def node_graph(x=("N", 4, 8, 8), a=("N", 4), w=W, b=(4, 8), s=None, group=2) -> onnx.ModelProto:
    """One contract node with activations X, A (and S) as graph inputs of the given shapes, W and B initializers."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))
              for name, shape in (("X", x), ("A", a), ("S", s)) if shape is not None]
    initializers = [numpy_helper.from_array(np.zeros(shape, np.float32), name)
                    for name, shape in (("W", w), ("B", b)) if shape is not None]
    node = helper.make_node(OP_TYPE, ["X", "A", "W", "B" if b else "", *(["S"] if s else [])], ["Y"], domain=DOMAIN,
                            name="conv", group=group)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph)


@pytest.mark.parametrize("shapes, problem", [
    ({"a": ("N", 5)}, r"A is \[N, 5\] but W \[4, 8, 2, 3, 3\] needs \[N, 4\]"),
    ({"a": ("N", 4, 7)}, r"A is \[N, 4, 7\] but W .* needs \[N, 4, 8\]"),
    ({"a": ("N", 4, 2, 2)}, r"A has rank 4 .*expected 2 or 3"),
    ({"b": (4, 7)}, r"B is \[4, 7\] but W .* needs \[4, 8\]"),
    ({"s": ("N", 3, 5)}, r"S is \[N, 3, 5\] but W .* needs \[N, 3, 3\]"),
    ({"w": (4, 8, 2, 3, 5), "s": ("N", 5, 3)}, r"S is \[N, 5, 3\] but W \[4, 8, 2, 3, 5\] needs \[N, 3, 5\]"),
    ({"x": ("N", 6, 8, 8)}, r"X is \[N, 6, 8, 8\] but W .* with group 2 needs C = 4"),
    ({"group": 3, "x": ("N", 6, 8, 8)}, r"W .* has M = 8 output channels, not divisible by group 3"),
    ({"w": (4, 8, 2, 3)}, r"W has rank 4 .*expected 5"),
], ids=["attention-K", "attention-M", "attention-rank", "bias", "spatial", "spatial-transposed", "channels", "groups",
        "weight-rank"])
def test_a_broken_node_is_named_with_its_problem(shapes, problem):
    with pytest.raises(DyconvError, match=rf"node conv breaks the dyconv::DynamicConv2d contract: {problem}"):
        check_contract_shapes(node_graph(**shapes))


def test_a_node_that_keeps_the_contract_passes():
    check_contract_shapes(node_graph(s=("N", 3, 3)))
    check_contract_shapes(node_graph(w=(4, 8, 2, 3, 5), s=("N", 3, 5)))  # S is [N, kH, kW]: W's kernel, in order
    check_contract_shapes(node_graph(a=("N", 4, 8), b=None))

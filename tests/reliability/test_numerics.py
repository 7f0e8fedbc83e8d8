"""verify's numerics: NaN/Inf outputs are named and traced to their first node; fp16 overflow in intermediates.

Each graph is built by hand next to a PyTorch module that computes what the graph should; the
graph then gets one defect (a Log where there should be none, a division by zero, a cast of values
beyond 65504 to float16) and ``verify_onnx`` must name it.
"""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from dyconv_deploy.errors import VerificationError
from dyconv_deploy.tolerance import Tolerance
from dyconv_deploy.verify import first_bad_node, verify_onnx

SHAPE = (1, 3, 4, 4)
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


class Scaled(nn.Module):
    """``post(scale * x)``: the function every graph below computes when it has no defect."""

    def __init__(self, scale: float, post=lambda y: y):
        super().__init__()
        self.scale, self.post = scale, post

    def forward(self, x):
        return self.post(self.scale * x)


def graph(*nodes, scale: float = 2.0) -> onnx.ModelProto:
    """``input`` -> Mul(scale) named ``scale`` -> ``nodes`` (each (name, op, extra inputs, attrs)) -> ``output``."""
    made = [helper.make_node("Mul", ["input", "s"], ["scaled"], name="scale")]
    previous = "scaled"
    for index, (name, op_type, extra, attrs) in enumerate(nodes):
        output = "output" if index == len(nodes) - 1 else f"{name}_out"
        made.append(helper.make_node(op_type, [previous, *extra], [output], name=name, **attrs))
        previous = output
    body = helper.make_graph(made, "numerics", [helper.make_tensor_value_info("input", FLOAT, ["batch", 3, 4, 4])],
                             [helper.make_tensor_value_info("output", FLOAT, None)],
                             [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                              numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _verify(model: nn.Module, proto: onnx.ModelProto) -> str:
    with pytest.raises(VerificationError) as info:
        verify_onnx(model, proto, SHAPE, [1, 2], backend="ort-cpu")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_nan_output_is_traced_to_the_first_node_that_makes_it():
    proto = graph(("log", "Log", [], {}), ("shift", "Add", ["zero"], {}))  # Log of negative pixels: NaN
    message = _verify(Scaled(2.0, torch.relu), proto)
    assert message.startswith("output 'output' at batch 1 has ") and "NaN" in message
    assert "PyTorch's output has none" in message
    assert "the first appears at node log (Log), output log_out:" in message  # not shift, which only passes it on


def test_an_infinite_output_names_its_node_and_nan_in_pytorch_too_is_the_models():
    proto = graph(("divide", "Div", ["zero"], {}), ("shift", "Add", ["zero"], {}))
    assert "at node divide (Div)" in _verify(Scaled(2.0), proto)
    message = _verify(Scaled(2.0, torch.log), graph(("log", "Log", [], {}), ("shift", "Add", ["zero"], {})))
    assert "has them too: the model itself produces them" in message


def test_fp16_overflow_in_an_intermediate_fails_even_when_the_outputs_agree():
    """1e6 * x is cast to float16 (infinities) and squashed by a Sigmoid: the outputs match PyTorch's
    sigmoid(1e6 * x) (0 or 1 either way), the overflow is still found, at the node whose values leave
    the float16 range."""
    to = {"to": HALF}
    proto = graph(("to_half", "Cast", [], to), ("squash", "Sigmoid", [], {}), ("to_float", "Cast", [], {"to": FLOAT}),
                  scale=1e6)
    message = _verify(Scaled(1e6, torch.sigmoid), proto)
    assert message.startswith("fp16 overflow at batch 1: node scale (Mul), output scaled: |value| up to ")
    assert "beyond the float16 range (±65504)" in message


def test_an_fp16_graph_within_range_and_a_clean_fp32_graph_pass():
    within = graph(("to_half", "Cast", [], {"to": HALF}), ("to_float", "Cast", [], {"to": FLOAT}), scale=100.0)
    for proto, scale in ((within, 100.0), (graph(("shift", "Add", ["zero"], {})), 2.0)):
        comparisons = verify_onnx(Scaled(scale), proto, SHAPE, [1], backend="ort-cpu",
                                  tolerance=Tolerance(atol=0.1, rtol=1e-2))  # fp16 rounding of 100 x
        assert all(c.passed for c in comparisons)


def test_first_bad_node_reads_contract_nodes_through_the_expansion():
    """A plugin graph with a NaN produced by its dyconv node: traced to that node (ONNX Runtime runs its
    expansion, whose last node writes the node's output)."""
    from dyconv_deploy.export import contract_nodes, export_onnx
    from dyconv_deploy.nn import DynamicConv2d

    layer = DynamicConv2d(4, 4, 3, padding=1, num_kernels=2, reduction=1).eval()
    with torch.no_grad():
        layer.weight[0, 0, 0, 0, 0] = float("nan")
    proto = export_onnx(layer, torch.randn(2, 4, 6, 6), exporter="torchscript", opset=17)
    node = contract_nodes(proto)[0]
    found = first_bad_node(proto, {"input": np.random.default_rng(0).normal(size=(2, 4, 6, 6)).astype(np.float32)})
    assert found.startswith(f"node {node.name} (DynamicConv2d), output {node.output[0]}: ")

"""ONNX Runtime's expansion of ``dyconv::DynamicConv2d`` (per-sample Scan, or one MatMul for 1x1) vs the reference."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.ops import DOMAIN, OP_TYPE, OP_VERSION, dynamic_conv2d_reference
from dyconv_deploy.runtime import load_runtime
from dyconv_deploy.runtime.ort_custom_op import to_onnxruntime
from dyconv_deploy.tolerance import TOLERANCES, compare

# name, kernel, stride (one int, or (sH, sW)), padding (t, l, b, r), dilation, groups, C, M, bias,
# rank-3 attention (DyNet), spatial (ODConv)
CASES = [
    ("pointwise", 1, 1, (0, 0, 0, 0), 1, 1, 8, 6, True, False, False),
    ("pointwise-stride2-groups2-nobias", 1, 2, (0, 0, 0, 0), 1, 2, 8, 6, False, False, False),
    ("pointwise-dynet-spatial", 1, 1, (0, 0, 0, 0), 1, 1, 4, 6, True, True, True),
    ("pointwise-padded", 1, 1, (1, 0, 1, 0), 1, 1, 4, 6, True, False, False),
    ("3x3", 3, 1, (1, 1, 1, 1), 1, 1, 4, 6, True, False, False),
    ("3x3-stride2-asymmetric", 3, 2, (0, 1, 2, 1), 1, 1, 4, 6, True, False, False),
    ("5x5-dilation2-groups2-dynet", 5, 1, (4, 4, 4, 4), 2, 2, 4, 6, True, True, False),
    ("3x3-depthwise-spatial", 3, 1, (1, 1, 1, 1), 1, 6, 6, 6, False, False, True),
    ("pointwise-stride1x2", 1, (1, 2), (0, 0, 0, 0), 1, 1, 8, 6, True, False, False),
]
K, SIZE = 3, 7


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value, value)


def _case_model(kernel, stride, padding, dilation, groups, c, m, bias, rank3, spatial, rng):
    weight = rng.standard_normal((K, m, c // groups, kernel, kernel)).astype(np.float32)
    biases = rng.standard_normal((K, m)).astype(np.float32) if bias else None
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", c, SIZE, SIZE]),
              helper.make_tensor_value_info("A", TensorProto.FLOAT, ["N", K, m] if rank3 else ["N", K])]
    if spatial:
        inputs.append(helper.make_tensor_value_info("S", TensorProto.FLOAT, ["N", kernel, kernel]))
    node = helper.make_node(OP_TYPE, ["X", "A", "W", "B" if bias else "", "S" if spatial else ""], ["Y"],
                            domain=DOMAIN, strides=list(_pair(stride)), pads=list(padding), dilations=[dilation] * 2,
                            group=groups)
    graph = helper.make_graph([node], "contract", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                                                                         None)],
                              [numpy_helper.from_array(weight, "W")]
                              + ([numpy_helper.from_array(biases, "B")] if bias else []))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(DOMAIN, OP_VERSION)])
    return model, weight, biases


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_expansion_matches_the_reference_op(case, batch):
    name, kernel, stride, padding, dilation, groups, c, m, bias, rank3, spatial = case
    rng = np.random.default_rng(batch)
    model, weight, biases = _case_model(kernel, stride, padding, dilation, groups, c, m, bias, rank3, spatial, rng)
    feeds = {"X": rng.standard_normal((batch, c, SIZE, SIZE)).astype(np.float32),
             "A": rng.random((batch, K, m) if rank3 else (batch, K)).astype(np.float32)}
    if spatial:
        feeds["S"] = rng.random((batch, kernel, kernel)).astype(np.float32)
    expected = dynamic_conv2d_reference(
        torch.from_numpy(feeds["X"]), torch.from_numpy(feeds["A"]), torch.from_numpy(weight),
        None if biases is None else torch.from_numpy(biases),
        torch.from_numpy(feeds["S"]) if spatial else None, stride=_pair(stride), padding=padding,
        dilation=(dilation,) * 2, groups=groups)
    result = compare(load_runtime(model, "ort-cpu").run(feeds)["Y"], expected, TOLERANCES["fp32"])
    assert result.passed, f"{name}@{batch}: {result}"


@pytest.mark.parametrize("case, loop", [(CASES[0], False), (CASES[1], False), (CASES[3], True), (CASES[4], True)],
                         ids=["pointwise", "pointwise-strided", "padded-1x1", "3x3"])
def test_unpadded_pointwise_convs_need_no_per_sample_loop(case, loop):
    model, _, _ = _case_model(*case[1:], np.random.default_rng(0))
    nodes = to_onnxruntime(model).graph.node
    ops = [node.op_type for node in nodes]
    assert ("Scan" in ops) == loop and ("Conv" in ops) is False  # a Conv only inside the Scan body
    has_bias = case[8]
    assert ops.count("MatMul") == 1 + has_bias + (not loop)  # mixing kernels (and biases), the 1x1 conv
    assert all(node.domain in ("", "ai.onnx") for node in nodes)


def test_expansion_is_a_pure_function():
    model, _, _ = _case_model(*CASES[4][1:], np.random.default_rng(0))
    before = model.SerializeToString()
    expanded = to_onnxruntime(model)
    assert model.SerializeToString() == before and expanded is not model
    assert [n.op_type for n in model.graph.node] == [OP_TYPE]
    onnx.checker.check_model(expanded, full_check=True)

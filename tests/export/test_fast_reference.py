"""The torch-backed ``onnx.reference`` Conv and MaxPool agree with the stock kernels they replace."""

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from dyconv_deploy.export.fast_reference import FAST_REFERENCE_OPS
from dyconv_deploy.tolerance import TOLERANCES, compare

CONV_CASES = {
    "3x3-pads1": dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    "3x3-stride2-asymmetric": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1]),
    "3x3-dilated-groups2": dict(kernel_shape=[3, 3], dilations=[2, 2], group=2, pads=[2, 2, 2, 2]),
    "1x1-valid": dict(kernel_shape=[1, 1], auto_pad="VALID"),
    "3x3-same-upper (stock fallback)": dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
}
POOL_CASES = {
    "3x3-stride2-pads1": dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "2x2-ceil": dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "3x3-asymmetric-dilated": dict(kernel_shape=[3, 3], pads=[0, 1, 1, 0], dilations=[2, 1]),
}


def _model(node: str, inputs: dict[str, list[int]], **attrs):
    graph = helper.make_graph(
        [helper.make_node(node, list(inputs), ["Y"], **attrs)], "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _assert_same_as_stock(model, feeds):
    fast = ReferenceEvaluator(model, new_ops=FAST_REFERENCE_OPS).run(None, feeds)[0]
    stock = ReferenceEvaluator(model).run(None, feeds)[0]
    result = compare(fast, stock, TOLERANCES["layer"])
    assert result.passed, str(result)


@pytest.mark.parametrize("attrs", CONV_CASES.values(), ids=CONV_CASES)
def test_conv_matches_stock_reference(attrs):
    rng = np.random.default_rng(0)
    groups = attrs.get("group", 1)
    feeds = {"X": rng.standard_normal((2, 4, 9, 8), dtype=np.float32),
             "W": rng.standard_normal((6, 4 // groups, *attrs["kernel_shape"]), dtype=np.float32),
             "B": rng.standard_normal(6, dtype=np.float32)}
    _assert_same_as_stock(_model("Conv", {k: list(v.shape) for k, v in feeds.items()}, **attrs), feeds)


@pytest.mark.parametrize("attrs", POOL_CASES.values(), ids=POOL_CASES)
def test_max_pool_matches_stock_reference(attrs):
    feeds = {"X": np.random.default_rng(1).standard_normal((2, 3, 9, 8), dtype=np.float32)}
    _assert_same_as_stock(_model("MaxPool", {"X": [2, 3, 9, 8]}, **attrs), feeds)

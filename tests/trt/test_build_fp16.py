"""The fp16 pass of TensorRT builds: fp32 I/O, fp32 attention branch, fp16 elsewhere, outputs within the fp16 tolerance."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.runtime import load_runtime
from dyconv_deploy.tolerance import TOLERANCES, compare
from dyconv_deploy.trt.fp16 import convert_to_fp16

C, M, K, SIZE = 4, 6, 3, 8


def _model(contract: bool, seed: int = 0) -> onnx.ModelProto:
    """``X -> GAP -> MatMul -> Div(τ) -> Softmax = A``; ``Y = Relu(DynamicConv2d(X, A, W, B))`` or, without the
    contract op, ``Y = Relu(Conv(X) * Sigmoid(MatMul(GAP(X))))`` (standard ops only, runs on ONNX Runtime)."""
    rng = np.random.default_rng(seed)
    arrays = {"fc": rng.standard_normal((C, K if contract else M)), "tau": np.array([30.0]),
              "W": rng.standard_normal((K, M, C, 3, 3)) * 0.3 if contract else rng.standard_normal((M, C, 3, 3)) * 0.3,
              "B": rng.standard_normal((K, M)), "axes": np.array([2, 3])}
    inits = [numpy_helper.from_array(v.astype(np.int64 if k == "axes" else np.float32), k) for k, v in arrays.items()]
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["gap"], keepdims=0, name="gap"),
             helper.make_node("MatMul", ["gap", "fc"], ["z"], name="fc")]
    if contract:
        nodes += [helper.make_node("Div", ["z", "tau"], ["zt"], name="temperature"),
                  helper.make_node("Softmax", ["zt"], ["a"], axis=1, name="softmax"),
                  helper.make_node(OP_TYPE, ["x", "a", "W", "B"], ["y0"], domain=DOMAIN, pads=[1, 1, 1, 1],
                                   name="dyconv")]
    else:
        nodes += [helper.make_node("Sigmoid", ["z"], ["g"], name="gate"),
                  helper.make_node("Unsqueeze", ["g", "axes"], ["g4"], name="unsqueeze"),
                  helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                  helper.make_node("Mul", ["c", "g4"], ["y0"], name="scale")]
    nodes.append(helper.make_node("Relu", ["y0"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["N", C, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", M, SIZE, SIZE])], inits)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(DOMAIN, 1)] if contract else [])
    return helper.make_model(graph, opset_imports=opsets)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    typed = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    return {v.name: v.type.tensor_type.elem_type for v in typed} | {t.name: t.data_type for t in
                                                                      model.graph.initializer}


def test_contract_graph_keeps_io_and_attention_branch_fp32():
    converted = convert_to_fp16(_model(contract=True))
    types = _elem_types(converted)
    assert types["x"] == types["y"] == TensorProto.FLOAT
    assert types["W"] == types["B"] == TensorProto.FLOAT16
    for tensor in ("gap", "z", "zt", "a", "fc", "tau"):  # the attention branch and its constants
        assert types[tensor] == TensorProto.FLOAT, tensor
    conv = next(n for n in converted.graph.node if n.op_type == OP_TYPE)
    assert all(types[name] == TensorProto.FLOAT16 for name in conv.input)


# The project's ONNX Runtime kernel for the contract op is fp32-only, so fp16 contract graphs run on the reference.
@pytest.mark.parametrize("contract, backend", [(True, "reference"), (False, "ort-cpu")])
def test_fp16_model_matches_fp32_within_fp16_tolerance(contract, backend):
    model = _model(contract)
    x = np.random.default_rng(1).standard_normal((3, C, SIZE, SIZE)).astype(np.float32)
    expected = load_runtime(model, backend).run({"x": x})["y"]
    actual = load_runtime(convert_to_fp16(model), backend).run({"x": x})["y"]
    assert actual.dtype == np.float32
    result = compare(actual, expected, TOLERANCES["fp16"], "y")
    assert result.passed, str(result)


def test_standard_graph_has_fp16_conv_and_fp32_reduce_mean():
    converted = convert_to_fp16(_model(contract=False))
    types = _elem_types(converted)
    assert types[_node(converted, "conv").input[1]] == TensorProto.FLOAT16
    assert types[_node(converted, "gap").output[0]] == TensorProto.FLOAT  # ReduceMean is in KEEP_FP32_OPS
    assert types["g"] == TensorProto.FLOAT16


def test_large_constants_are_clipped_to_the_fp16_range():
    model = _model(contract=False)
    weight = next(t for t in model.graph.initializer if t.name == "W")
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] = 1e6
    weight.CopyFrom(numpy_helper.from_array(array, "W"))
    converted = convert_to_fp16(model)
    halved = numpy_helper.to_array(next(t for t in converted.graph.initializer if t.name == "W"))
    assert np.isfinite(halved).all() and halved.flat[0] == np.finfo(np.float16).max

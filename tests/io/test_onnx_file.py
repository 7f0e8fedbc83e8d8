"""check_and_infer: the checker and shape inference see every shape but never serialise the weights."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.export import export_onnx
from dyconv_deploy.io.onnx_file import WEIGHT_ELEMENTS, check_and_infer
from dyconv_deploy.io.model_spec import default_input_shape, load_model
from dyconv_deploy.lower import lower
from dyconv_deploy.ops.onnx_schema import register_schema

TINY = "sample:tiny_dynamic"


def _resize_model() -> onnx.ModelProto:
    """Conv with a large weight, then a Resize whose float scales (a small initializer) fix the output shape."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 8, 3, 3)).astype(np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["y"], name="resize", mode="nearest")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64, 10, 10])], [weight, scales])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def tiny_graphs() -> list[onnx.ModelProto]:
    torch.manual_seed(0)
    raw = export_onnx(load_model(TINY), torch.randn(1, *default_input_shape(TINY)[1:]))
    return [raw, lower(raw, "plugin"), lower(raw, "experts")]


def test_the_same_model_as_inference_on_the_whole_proto(tiny_graphs):
    register_schema()
    for model in [_resize_model(), *tiny_graphs]:
        assert any(np.prod(t.dims) > WEIGHT_ELEMENTS for t in model.graph.initializer)
        for options in ({}, {"strict_mode": True, "data_prop": True}):
            expected = onnx.shape_inference.infer_shapes(model, **options)
            got = check_and_infer(model, **options)
            assert got.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    conv = check_and_infer(_resize_model()).graph.value_info[0]
    assert conv.name == "c" and [d.dim_value or d.dim_param for d in conv.type.tensor_type.shape.dim] == ["n", 64, 5, 5]
    halved = _resize_model()  # the scales' values are read: output dims that disagree with them are refused
    halved.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([1, 1, 0.5, 0.5], np.float32), "scales"))
    with pytest.raises(onnx.shape_inference.InferenceError):
        check_and_infer(halved, strict_mode=True)


def test_weights_are_not_serialised(tiny_graphs, monkeypatch):
    infer_shapes, sizes = onnx.shape_inference.infer_shapes, []

    def recording(model, *args, **kwargs):
        sizes.append(model.ByteSize())
        return infer_shapes(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", recording)
    model = tiny_graphs[2]
    check_and_infer(model, strict_mode=True)
    assert sizes and max(sizes) < model.ByteSize() / 2


def test_the_checker_still_sees_the_graph_and_the_weights_shapes():
    model = _resize_model()
    model.graph.node[0].input[1] = "missing"
    with pytest.raises(onnx.checker.ValidationError, match="missing"):
        check_and_infer(model)
    wrong = _resize_model()  # 32 output channels against the declared 64: inference needs the weight's shape
    wrong.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((32, 8, 3, 3), np.float32), "w"))
    with pytest.raises(onnx.shape_inference.InferenceError):
        check_and_infer(wrong, strict_mode=True)


def test_the_input_model_is_left_alone():
    model = _resize_model()
    before = model.SerializeToString(deterministic=True)
    check_and_infer(model, full_check=True)
    assert model.SerializeToString(deterministic=True) == before

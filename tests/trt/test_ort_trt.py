"""``ort-trt``: contract nodes as ONNX Runtime's TensorRT EP expects them (``trt.plugins``), and the backend."""

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from dyconv_deploy.trt.ort_trt import ORT_TRT_DOMAIN, to_ort_trt

K, M, C = 2, 4, 3


def _odconv_without_bias() -> onnx.ModelProto:
    """``Y = DynamicConv2d(X, A, W, "", S)`` with a softmax attention and a sigmoid spatial attention."""
    nodes = [helper.make_node("Softmax", ["logits"], ["A"], axis=1),
             helper.make_node("Sigmoid", ["spatial"], ["S"]),
             helper.make_node(OP_TYPE, ["X", "A", "W", "", "S"], ["Y"], domain=DOMAIN, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["Y"], ["out"])]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", C, 5, 5]),
              helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", K]),
              helper.make_tensor_value_info("spatial", TensorProto.FLOAT, ["N", 3, 3])]
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((K, M, C, 3, 3)).astype(np.float32), "W")
    graph = helper.make_graph(nodes, "odconv", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                                       ["N", M, 5, 5])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def test_contract_nodes_become_trt_plugins_nodes_with_the_plugin_attributes():
    converted = to_ort_trt(_odconv_without_bias())
    (node,) = [n for n in converted.graph.node if n.op_type == OP_TYPE]
    assert node.domain == ORT_TRT_DOMAIN  # the TensorRT EP's custom-op domain, op named after the creator
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attributes["plugin_version"] == PLUGIN_VERSION.encode()
    assert attributes["plugin_namespace"] == PLUGIN_NAMESPACE.encode() and attributes["pads"] == [1, 1, 1, 1]
    assert all(node.input) and len(node.input) == 5  # no empty input for the parser (zero bias instead)
    assert {o.domain: o.version for o in converted.opset_import} == {"": 17, ORT_TRT_DOMAIN: 1}
    assert [n.op_type for n in converted.graph.node if n.domain == ""] == ["Softmax", "Sigmoid", "Relu"]
    onnx.checker.check_model(converted)


def test_ort_trt_without_the_tensorrt_execution_provider_says_what_to_install(monkeypatch, tmp_path):
    import onnxruntime

    from dyconv_deploy.runtime import load_runtime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT execution provider")
    onnx.save(_odconv_without_bias(), str(tmp_path / "m.onnx"))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DyconvError, match="needs ONNX Runtime's TensorrtExecutionProvider.*onnxruntime-gpu"):
        load_runtime(tmp_path / "m.onnx", "ort-trt").load()


def test_verify_opens_ort_trt_and_explains_a_missing_provider(monkeypatch, tmp_path):
    import onnxruntime

    from dyconv_deploy.verify import open_runtime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the TensorRT execution provider")
    onnx.save(_odconv_without_bias(), str(tmp_path / "m.onnx"))
    with pytest.raises(DyconvError, match="^the ort-trt backend needs ONNX Runtime's TensorrtExecutionProvider"):
        open_runtime(tmp_path / "m.onnx", "ort-trt")


@pytest.fixture
def ort_tensorrt_plugin(tensorrt_gpu):
    """The plugin library, where onnxruntime has the TensorRT provider; skips saying what is missing."""
    import onnxruntime

    from dyconv_deploy.trt.plugin import locate_plugin_library

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no TensorrtExecutionProvider (pip install 'onnxruntime-gpu>=1.22')")
    try:
        return locate_plugin_library()
    except DyconvError as exc:
        pytest.skip(f"plugin library not built ({exc})")


@pytest.mark.gpu
def test_ort_trt_runs_the_plugin_like_the_reference(ort_tensorrt_plugin):
    from dyconv_deploy.runtime import load_runtime
    from dyconv_deploy.tolerance import TOLERANCES, compare

    model, rng = _odconv_without_bias(), np.random.default_rng(1)
    feeds = {"X": rng.standard_normal((3, C, 5, 5)), "logits": rng.standard_normal((3, K)) * 2,
             "spatial": rng.standard_normal((3, 3, 3))}
    feeds = {name: value.astype(np.float32) for name, value in feeds.items()}
    expected = load_runtime(model, "reference").run(feeds)["out"]
    with load_runtime(model, "ort-trt", plugin_library=ort_tensorrt_plugin) as runtime:
        actual = runtime.run(feeds)["out"]
    result = compare(actual, expected, TOLERANCES["fp32"], "out")
    assert result.passed, str(result)

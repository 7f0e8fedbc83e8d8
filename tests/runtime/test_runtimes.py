"""The runtime interface over torch, onnx.reference and ONNX Runtime CPU; errors of the others here."""

import io
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.deps import available
from dyconv_deploy.errors import DyconvError, MissingDependency
from dyconv_deploy.ops import dynamic_conv2d
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.runtime import BACKENDS, TensorSpec, is_engine, load_runtime
from dyconv_deploy.tolerance import TOLERANCES, compare
from dyconv_deploy.trt.sidecar import write_sidecar

C, M, K, SIZE = 3, 4, 2, 6
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated


def _conv_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(C, M, 3, padding=1), torch.nn.ReLU()).eval()


def _export(model: torch.nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, C, SIZE, SIZE),), buffer, dynamo=False, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _contract_graph(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """``y = DynamicConv2d(x, a, W, B)`` with x and a as graph inputs (dynamic batch)."""
    node = helper.make_node(OP_TYPE, ["x", "a", "W", "B"], ["y"], domain=DOMAIN, pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "contract", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, SIZE, SIZE]),
        helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", M, SIZE, SIZE])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


@pytest.mark.parametrize("batch", [1, 3])
def test_torch_reference_and_onnxruntime_agree_with_a_dynamic_batch(batch):
    model = _conv_net()
    proto = _export(model)
    x = np.random.default_rng(batch).standard_normal((batch, C, SIZE, SIZE)).astype(np.float32)
    expected = load_runtime(model, "torch").run({"input": x})["output"]
    for backend in ("reference", "ort-cpu"):
        with load_runtime(proto, backend) as runtime:
            result = compare(runtime.run({"input": x})["output"], expected, TOLERANCES["fp32"], backend)
        assert result.passed, str(result)


def test_contract_op_runs_on_onnxruntime_cpu_and_the_reference():
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((K, M, C, 3, 3)) * 0.3).astype(np.float32)
    bias = rng.standard_normal((K, M)).astype(np.float32)
    x = rng.standard_normal((2, C, SIZE, SIZE)).astype(np.float32)
    a = torch.softmax(torch.from_numpy(rng.standard_normal((2, K)).astype(np.float32)), 1).numpy()
    expected = dynamic_conv2d(*map(torch.from_numpy, (x, a, weight, bias)), padding=(1, 1, 1, 1)).numpy()
    proto = _contract_graph(weight, bias)
    for backend in ("reference", "ort-cpu"):
        result = compare(load_runtime(proto, backend).run({"x": x, "a": a})["y"], expected, TOLERANCES["fp32"])
        assert result.passed, f"{backend}: {result}"


def test_specs_describe_dynamic_dimensions(tmp_path):
    onnx.save(_export(_conv_net()), str(tmp_path / "net.onnx"))
    runtime = load_runtime(tmp_path / "net.onnx", "ort-cpu").load()
    assert runtime.providers == ["CPUExecutionProvider"]
    (spec,) = runtime.input_specs
    assert spec == TensorSpec("input", ("batch", C, SIZE, SIZE), np.dtype(np.float32)) and spec.is_dynamic
    assert str(spec) == "input[batchx3x6x6]:float32"


def _two_outputs() -> onnx.ModelProto:
    """``pooled = mean over H, W`` ``[N, C]`` and ``scaled = 2 x`` ``[N, C, H, W]``, in that order."""
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[2, 3], keepdims=0),
                               helper.make_node("Mul", ["x", "two"], ["scaled"])], "two", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, SIZE, SIZE])], [
        helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", C]),
        helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", C, SIZE, SIZE])],
        [numpy_helper.from_array(np.array(2, np.float32), "two")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("backend", ["reference", "ort-cpu"])
def test_each_output_comes_back_under_its_own_name(backend):
    x = np.random.default_rng(0).standard_normal((3, C, SIZE, SIZE)).astype(np.float32)
    with load_runtime(_two_outputs(), backend) as runtime:
        outputs = runtime.run({"x": x})
        assert [spec.name for spec in runtime.output_specs] == ["pooled", "scaled"]
    assert list(outputs) == ["pooled", "scaled"]
    np.testing.assert_allclose(outputs["pooled"], x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["scaled"], 2 * x, rtol=1e-6, atol=0)


@pytest.mark.parametrize("threads, spinning", [(1, False), (2, True)])
def test_onnxruntime_sessions_take_the_threads_and_spinning_asked_for(threads, spinning):
    """``bench`` interleaves sessions with one thread each and spinning off; the session must have them."""
    runtime = load_runtime(_export(_conv_net()), "ort-cpu", threads=threads, spinning=spinning).load()
    options = runtime._session.get_session_options()
    assert options.intra_op_num_threads == threads
    if spinning:  # ONNX Runtime's default (spinning on): no entry at all
        with pytest.raises(Exception, match="does not have configuration with key"):
            options.get_session_config_entry("session.intra_op.allow_spinning")
    else:
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(DyconvError, match="valid backends: " + ", ".join(BACKENDS)):
        load_runtime("model.onnx", "tensorflow")


def test_wrong_input_names_are_reported():
    with pytest.raises(DyconvError, match=r"expects inputs \['input'\] but got \['x'\]"):
        load_runtime(_conv_net(), "torch").run({"x": np.zeros((1, C, SIZE, SIZE), np.float32)})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_backends_explain_their_absence():
    with pytest.raises(DyconvError, match="sees no CUDA device"):
        load_runtime(_conv_net(), "torch", device="cuda").load()
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(DyconvError, match="install onnxruntime-gpu"):
            load_runtime(_export(_conv_net()), "ort-cuda").load()


@pytest.mark.skipif(available("tensorrt"), reason="tensorrt is importable here")
def test_trt_backend_without_tensorrt_says_what_to_install(tmp_path):
    with pytest.raises(MissingDependency, match=r"dyconv-deploy\[trt\]"):
        load_runtime(tmp_path / "m.engine", "trt").load()


def test_trt_backend_checks_the_sidecar_before_deserialising(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, {"tensorrt_version": "10.1.0", "compute_capability": "9.0", "gpu_name": "H100"})
    with pytest.raises(DyconvError, match="m.engine was built with TensorRT 10.1.0 but TensorRT 10.3.0 is installed"):
        load_runtime(engine, "trt").load()


def test_engine_suffixes():
    assert is_engine("m.engine") and is_engine("dir/m.plan") and not is_engine("m.onnx")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_trt_backend_locates_a_plugin_the_engine_does_not_carry(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    plugin = tmp_path / "libdyconv_trt_plugin.so"
    plugin.write_bytes(b"\x7fELF")
    monkeypatch.setenv("DYCONV_PLUGIN_LIBRARY", str(plugin))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, {"tensorrt_version": "10.3.0", "plugin_sha256": "ab" * 32, "plugin_serialized": False})
    runtime = load_runtime(engine, "trt")
    with pytest.raises(DyconvError, match="needs a CUDA GPU"):
        runtime.load()
    assert runtime.plugin_library == plugin

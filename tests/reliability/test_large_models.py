"""Models over the 2 GiB protobuf limit go through export and verify on the path-based APIs.

The limit is ``onnx.checker.MAXIMUM_PROTOBUF``; it is lowered here so that the tiny sample is "large".
``onnx.checker.check_model(proto)`` then refuses it by itself; in-memory shape inference and
``onnxruntime.InferenceSession(bytes)`` only hit the real limit, so :func:`large_model_limit` wraps
them to refuse an over-limit proto the same way.
"""

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from dyconv_deploy.cli.main import main
from dyconv_deploy.errors import VerificationError
from dyconv_deploy.verify import verify_onnx

LIMIT = 64 << 10  # bytes: the tiny sample is ~150 KB (118 KB of weights), its graph without weights ~40 KB


@pytest.fixture
def large_model_limit(monkeypatch) -> list:
    """Lower the limit to :data:`LIMIT`; returns the sources ``InferenceSession`` got (paths or bytes)."""
    monkeypatch.setattr(onnx.checker, "MAXIMUM_PROTOBUF", LIMIT)
    infer_shapes, session = onnx.shape_inference.infer_shapes, onnxruntime.InferenceSession
    sources = []

    def refusing_infer_shapes(model, *args, **kwargs):
        if isinstance(model, onnx.ModelProto) and model.ByteSize() > LIMIT:
            raise ValueError(f"proto of {model.ByteSize()} bytes: over the protobuf limit")
        return infer_shapes(model, *args, **kwargs)

    def refusing_session(source, *args, **kwargs):
        if isinstance(source, bytes) and len(source) > LIMIT:
            raise ValueError(f"{len(source)} bytes: over the protobuf limit")
        sources.append(source)
        return session(source, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refusing_infer_shapes)
    monkeypatch.setattr(onnxruntime, "InferenceSession", refusing_session)
    return sources


@pytest.mark.parametrize("strategy", ["plugin", "experts"])
def test_an_over_limit_model_exports_with_external_data_and_verifies(large_model_limit, strategy, tmp_path, capsys):
    target = tmp_path / "tiny.onnx"
    export = ["export", "sample:tiny_dynamic", "-o", str(target), "--strategy", strategy, "--exporter", "torchscript",
              "--opset", "17", "--batch", "2"]
    assert main(export) == 0, capsys.readouterr().err
    assert target.stat().st_size < LIMIT and len(list(tmp_path.glob("tiny.onnx.*.data"))) == 1
    assert main(["verify", "sample:tiny_dynamic", str(target), "--backend", "ort-cpu", "--batch", "2"]) == 0, \
        capsys.readouterr().err
    assert large_model_limit and all(isinstance(source, str) for source in large_model_limit)


def test_the_nan_search_of_an_over_limit_model_runs_on_a_file(large_model_limit):
    """``verify``'s search for the first NaN node opens its own session (every node output marked)."""
    padding = numpy_helper.from_array(np.zeros(LIMIT, np.float32), "padding")  # unused: only makes it large
    graph = helper.make_graph([helper.make_node("Log", ["input"], ["output"], name="log")], "nan",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], [padding])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(VerificationError, match=r"the first appears at node log \(Log\)"):
        verify_onnx(nn.Identity(), proto, (1, 3, 4, 4), [1], backend="ort-cpu")  # Log of negative pixels: NaN
    assert len(large_model_limit) == 2 and all(isinstance(source, str) for source in large_model_limit)

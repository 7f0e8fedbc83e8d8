"""``triton-repo``: config.pbtxt parses against Triton's ModelConfig fields, and the served model runs.

The schema below is a hand-written subset of Triton's ``model_config.proto`` (field names and
types as Triton defines them); protobuf's text-format parser rejects any field or enum
value not in it, so a typo in the generated config fails here.
"""

import errno
import io
import os

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from dyconv_deploy.cli.main import main
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.runtime import load_runtime, triton
from dyconv_deploy.tolerance import TOLERANCES, compare
from dyconv_deploy.trt.sidecar import write_sidecar

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated
_F = descriptor_pb2.FieldDescriptorProto
_MESSAGES = {  # message -> [(field, type, label, type name)]
    "ModelConfig": [("name", _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("platform", _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("backend", _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("max_batch_size", _F.TYPE_INT32, _F.LABEL_OPTIONAL, None),
                    ("input", _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "ModelInput"),
                    ("output", _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "ModelOutput"),
                    ("dynamic_batching", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "ModelDynamicBatching"),
                    ("model_operations", _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "ModelOperations")],
    "ModelInput": [("name", _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                   ("data_type", _F.TYPE_ENUM, _F.LABEL_OPTIONAL, "DataType"),
                   ("dims", _F.TYPE_INT64, _F.LABEL_REPEATED, None)],
    "ModelOutput": [("name", _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
                    ("data_type", _F.TYPE_ENUM, _F.LABEL_OPTIONAL, "DataType"),
                    ("dims", _F.TYPE_INT64, _F.LABEL_REPEATED, None)],
    "ModelDynamicBatching": [("preferred_batch_size", _F.TYPE_INT32, _F.LABEL_REPEATED, None),
                             ("max_queue_delay_microseconds", _F.TYPE_UINT64, _F.LABEL_OPTIONAL, None)],
    "ModelOperations": [("op_library_filename", _F.TYPE_STRING, _F.LABEL_REPEATED, None)],
}
_DATA_TYPES = ["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
               "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING"]


def _model_config_class():
    file = descriptor_pb2.FileDescriptorProto(name="model_config_subset.proto", package="inference", syntax="proto3")
    enum = file.enum_type.add(name="DataType")
    for number, name in enumerate(_DATA_TYPES):
        enum.value.add(name=name, number=number)
    for message_name, fields in _MESSAGES.items():
        message = file.message_type.add(name=message_name)
        for number, (name, kind, label, type_name) in enumerate(fields, start=1):
            field = message.field.add(name=name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".inference.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _parse(path):
    return text_format.Parse(path.read_text(), _model_config_class()())


def _onnx_file(path, dynamic: bool = True):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
    torch.onnx.export(net, (torch.zeros(2, 3, 8, 8),), buffer, dynamo=False, input_names=["input"],
                      output_names=["output"], dynamic_axes=axes)
    path.write_bytes(buffer.getvalue())
    return net, path


def test_onnxruntime_repository_config_and_model(tmp_path):
    net, model = _onnx_file(tmp_path / "net.onnx")
    assert main(["triton-repo", str(model), "-o", str(tmp_path / "repo"), "--name", "tiny",
                 "--max-batch", "16", "--preferred-batch", "4,8"]) == 0
    folder = tmp_path / "repo" / "tiny"
    config = _parse(folder / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("tiny", "onnxruntime", 16)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input", 11, [3, 8, 8])]  # TYPE_FP32
    assert [(o.name, list(o.dims)) for o in config.output] == [("output", [4, 8, 8])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert not config.HasField("model_operations")
    assert "tritonserver --model-repository=/models" in (folder / "README.md").read_text()

    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    served = load_runtime(folder / "1" / "model.onnx", "ort-cpu").run({"input": x})["output"]
    with torch.no_grad():
        result = compare(served, net(torch.from_numpy(x)), TOLERANCES["fp32"])
    assert result.passed, str(result)


def test_tensorrt_repository_from_engine_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, {
        "plugin_serialized": True,
        "profiles": [{"x": {"min": [1, 3, 8, 8], "opt": [8, 3, 8, 8], "max": [32, 3, 8, 8]}}],
        "inputs": [{"name": "x", "shape": [-1, 3, -1, 8], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [-1, 10], "dtype": "float16"}]})
    plugin = tmp_path / "libdyconv_trt_plugin.so"
    plugin.write_bytes(b"\x7fELF")
    assert main(["triton-repo", str(engine), "-o", str(tmp_path / "repo"), "--plugin", str(plugin)]) == 0
    folder = tmp_path / "repo" / "dyconv_model"
    config = _parse(folder / "config.pbtxt")
    assert (config.backend, config.max_batch_size) == ("tensorrt", 32)
    assert list(config.input[0].dims) == [3, -1, 8] and config.output[0].data_type == 10  # TYPE_FP16
    assert (folder / "1" / "model.plan").read_bytes() == b"plan" and (folder / plugin.name).is_file()
    assert "--backend-config=tensorrt,version-compatible=true" in (folder / "README.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "64"], "exceeds the engine's profile maximum 32"),
    (["--preferred-batch", "8,64"], "must lie in 1..32"),
])
def test_engine_limits_are_checked(tmp_path, capsys, args, message):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, {"profiles": [{"x": {"min": [1, 3], "opt": [8, 3], "max": [32, 3]}}],
                           "inputs": [{"name": "x", "shape": [-1, 3], "dtype": "float32"}], "outputs": []})
    assert main(["triton-repo", str(engine), "-o", str(tmp_path / "repo"), *args]) == 2
    assert message in capsys.readouterr().err


def test_static_batch_graph_is_refused_for_dynamic_batching(tmp_path, capsys):
    _, model = _onnx_file(tmp_path / "static.onnx", dynamic=False)
    assert main(["triton-repo", str(model), "-o", str(tmp_path / "repo")]) == 2
    assert "needs a dynamic batch dimension" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_contract_graph_is_served_as_standard_ops(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight, x = rng.standard_normal((2, 4, 3, 3, 3)).astype(np.float32), rng.standard_normal((3, 3, 5, 5))
    attention = rng.random((3, 2)).astype(np.float32)
    node = helper.make_node("DynamicConv2d", ["x", "a", "W"], ["y"], domain="dyconv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5]),
                                            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5, 5])],
                              [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("dyconv", 1)])
    onnx.save(model, str(tmp_path / "plugin.onnx"))
    assert main(["triton-repo", str(tmp_path / "plugin.onnx"), "-o", str(tmp_path / "repo")]) == 0
    served_path = tmp_path / "repo" / "dyconv_model" / "1" / "model.onnx"
    served = onnx.load(str(served_path))
    assert all(n.domain in ("", "ai.onnx") for n in served.graph.node)  # Triton's ORT needs no custom op
    feeds = {"x": x.astype(np.float32), "a": attention}
    expected = load_runtime(model, "reference").run(feeds)["y"]
    result = compare(load_runtime(served_path, "ort-cpu").run(feeds)["y"], expected, TOLERANCES["fp32"])
    assert result.passed, str(result)


def _snapshot(folder):
    """Every entry under ``folder``: relative path -> (mode, bytes or None for a folder)."""
    return {str(p.relative_to(folder)): (p.stat().st_mode & 0o777, None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def written_repo(tmp_path):
    """``repo/tiny`` written once (max batch 16); returns the ONNX file and the repository folder."""
    _, model = _onnx_file(tmp_path / "net.onnx")
    assert main(["triton-repo", str(model), "-o", str(tmp_path / "repo"), "--name", "tiny", "--max-batch", "16"]) == 0
    return model, tmp_path / "repo"


def _fail_rename_into(target):
    """An ``os.rename`` whose first rename onto ``target`` while it is aside (the new folder's) fails."""
    rename, failed = os.rename, []

    def failing(src, dst):
        if os.fspath(dst) == os.fspath(target) and not os.path.exists(target) and not failed:
            failed.append(src)
            raise OSError(errno.EIO, "injected I/O error")
        return rename(src, dst)
    return failing


@pytest.mark.parametrize("failure", ["while-writing", "while-renaming"])
def test_a_failed_rewrite_leaves_the_repository_byte_identical_and_no_temp(written_repo, failure, monkeypatch):
    model, repo = written_repo
    before = _snapshot(repo)
    if failure == "while-writing":  # the model file is written, the config fails
        monkeypatch.setattr(triton, "config_pbtxt", lambda config: 1 / 0)
        expected = ZeroDivisionError
    else:  # the new folder is complete; renaming it in fails after the old one went aside
        monkeypatch.setattr(os, "rename", _fail_rename_into(repo / "tiny"))
        expected = DyconvError
    with pytest.raises(expected):
        triton.write_triton_repo(model, repo, name="tiny", max_batch=8, preferred_batch=(4,))
    assert _snapshot(repo) == before  # includes the absence of any hidden temp folder


def test_a_rewrite_replaces_the_repository_whole_with_modes_under_the_umask(written_repo):
    model, repo = written_repo
    (repo / "tiny" / "stale.txt").write_text("from an earlier run")
    previous = os.umask(0o022)
    try:
        assert main(["triton-repo", str(model), "-o", str(repo), "--name", "tiny", "--max-batch", "8",
                     "--preferred-batch", "4"]) == 0
    finally:
        os.umask(previous)
    assert _parse(repo / "tiny" / "config.pbtxt").max_batch_size == 8
    modes = {name: mode for name, (mode, _) in _snapshot(repo).items()}
    assert modes == {"tiny": 0o755, "tiny/1": 0o755, "tiny/1/model.onnx": 0o644, "tiny/README.md": 0o644,
                     "tiny/config.pbtxt": 0o644}  # no stale.txt, no temp entry

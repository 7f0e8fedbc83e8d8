"""build_engine's flow against the recording ``tensorrt`` stand-in (``fake_trt``, conftest.py) and the real one.

The assertions are about our logic: call order, profile, precision per major version, timing
cache reuse, atomic outputs and the sidecar.
"""

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.errors import DyconvError, MissingDependency
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.tolerance import TOLERANCES, compare
from dyconv_deploy.trt import build as build_module
from dyconv_deploy.trt.build import build_engine
from dyconv_deploy.trt.sidecar import file_sha256, read_sidecar

WEIGHT = np.random.default_rng(1).standard_normal((2, 3, 1, 1)).astype(np.float32)  # of _onnx's 1x1 Conv


def _onnx(path) -> str:
    weight = numpy_helper.from_array(WEIGHT, "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_tensorrt_10_fp16_profile_plugin_and_sidecar(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    model, plugin = _onnx(tmp_path / "m.onnx"), tmp_path / "libdyconv.so"
    plugin.write_bytes(b"\x7fELF plugin")
    engine = build_engine(model, tmp_path / "out" / "m.engine", fp16=True, workspace_mb=64, plugin_library=plugin)

    assert trt.names().index("check") < trt.names().index("load_library") < trt.names().index("parse")
    assert trt.names().index("parse") < trt.names().index("build")
    assert ("workspace", "workspace", 64 << 20) in trt.events
    assert ("profile", {"x": ((1, 3, 4, 4), (8, 3, 4, 4), (32, 3, 4, 4))}) in trt.events
    assert "serialize_plugins" not in trt.names()  # only version-compatible engines carry a plugin library
    assert ("monitor_continue", True) in trt.events
    assert engine.read_bytes() == b"ENGINE"
    sidecar = read_sidecar(engine)
    assert sidecar["tensorrt_version"] == "10.3.0" and sidecar["precision"] == "fp16"
    assert sidecar["onnx_sha256"] == file_sha256(model) and sidecar["plugin_sha256"] == file_sha256(plugin)
    assert sidecar["plugin_serialized"] is False
    assert sidecar["profiles"] == [{"x": {"min": [1, 3, 4, 4], "opt": [8, 3, 4, 4], "max": [32, 3, 4, 4]}}]
    assert sidecar["inputs"] == [{"name": "x", "shape": [-1, 3, 4, 4], "dtype": "float32"}]
    assert sidecar["plugin_tactics"] == [{"layer": "/features.1/DynamicConv2d", "tactic": 7,
                                          "algo": "tensor-core-experts"}]
    assert ("deserialize", b"ENGINE", False) in trt.events  # the built plan, inspected
    assert sorted(p.name for p in engine.parent.iterdir()) == ["m.engine", "m.engine.json"]


def test_the_sidecar_names_each_plugin_layers_tactic_and_survives_an_engine_it_cannot_inspect(fake_trt, tmp_path):
    layers = [{"Name": "dw", "LayerType": "PluginV3", "TacticValue": "0x0000000000000001"},
              {"Name": "pw", "LayerType": "PluginV3", "TacticValue": 4},
              {"Name": "odd", "LayerType": "PluginV3", "TacticValue": "0x00000000000000ff"},
              {"Name": "relu", "LayerType": "PointWiseV2", "TacticValue": "0x0000000000000003"}]
    fake_trt("10.3.0", engine_layers=layers)
    engine = build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", progress=False)
    assert read_sidecar(engine)["plugin_tactics"] == [
        {"layer": "dw", "tactic": 1, "algo": "depthwise"}, {"layer": "pw", "tactic": 4, "algo": "cublas-pointwise"},
        {"layer": "odd", "tactic": 255, "algo": None}]
    trt = fake_trt("10.3.0")
    del trt.LayerInformationFormat  # a TensorRT without the inspector's JSON: no tactics, the engine is kept
    engine = build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m2.engine", progress=False)
    assert read_sidecar(engine)["plugin_tactics"] is None and engine.read_bytes() == b"ENGINE"


def test_tactic_values_just_outside_the_algo_enum_are_named_none(fake_trt, tmp_path):
    """8 is one past ``tensor-core-experts`` (7) and -1 before ``auto`` (0): neither is a ``dyconv::Algo``, so neither
    gets a name (nor crashes the build after the engine was written)."""
    layers = [{"Name": "past", "LayerType": "PluginV3", "TacticValue": 8},
              {"Name": "before", "LayerType": "PluginV3", "TacticValue": -1},
              {"Name": "last", "LayerType": "PluginV3", "TacticValue": "0x7"}]
    fake_trt("10.3.0", engine_layers=layers)
    engine = build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", progress=False)
    assert read_sidecar(engine)["plugin_tactics"] == [{"layer": "past", "tactic": 8, "algo": None},
                                                      {"layer": "before", "tactic": -1, "algo": None},
                                                      {"layer": "last", "tactic": 7, "algo": "tensor-core-experts"}]


def test_an_engine_the_runtime_cannot_deserialize_keeps_its_sidecar_without_tactics(fake_trt, tmp_path, monkeypatch):
    """TensorRT raises RuntimeError from a plan it cannot load for inspection: the build still succeeds, with
    ``plugin_tactics`` null."""
    trt = fake_trt("10.3.0")

    def refuse(self, plan):
        raise RuntimeError("deserialization failed")

    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", refuse)
    engine = build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", progress=False)
    assert read_sidecar(engine)["plugin_tactics"] is None and engine.read_bytes() == b"ENGINE"


def test_the_builder_keeps_detailed_layer_information_and_the_sidecar_lists_the_outputs(fake_trt, tmp_path,
                                                                                       monkeypatch):
    """The inspector reports a layer's tactic only for a plan built with ``ProfilingVerbosity.DETAILED``; the sidecar
    records the outputs as it does the inputs (Triton's config reads them)."""
    trt = fake_trt("10.3.0")
    build = trt.Builder.build_serialized_network
    verbosity = []

    def recording(self, network, config):
        verbosity.append(getattr(config, "profiling_verbosity", None))
        return build(self, network, config)

    monkeypatch.setattr(trt.Builder, "build_serialized_network", recording)
    engine = build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", progress=False)
    assert verbosity == ["detailed"]
    assert read_sidecar(engine)["outputs"] == [{"name": "y", "shape": [-1, 2, 4, 4], "dtype": "float32"}]


def test_a_plugin_library_is_registered_once_per_process(fake_trt, tmp_path, monkeypatch):
    """TensorRT refuses to register the same plugin creators twice: a second build with the same library (a
    multi-engine export) does not load it again, but a build with another library does."""
    monkeypatch.setattr(build_module, "_LOADED_PLUGINS", set())
    trt, model = fake_trt(), _onnx(tmp_path / "m.onnx")
    first, second = tmp_path / "libdyconv.so", tmp_path / "other" / "libdyconv.so"
    second.parent.mkdir()
    for plugin in (first, second):
        plugin.write_bytes(b"\x7fELF plugin")
    for name, plugin in (("a", first), ("b", first), ("c", second)):
        build_engine(model, tmp_path / f"{name}.engine", plugin_library=plugin, progress=False)
    assert [e[1] for e in trt.events if e[0] == "load_library"] == [str(first.resolve()), str(second.resolve())]


def test_embed_plugin_builds_a_version_compatible_engine_that_carries_the_library(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    plugin = tmp_path / "libdyconv.so"
    plugin.write_bytes(b"\x7fELF plugin")
    engine = build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", plugin_library=plugin,
                          embed_plugin=True, progress=False)
    assert ("flag", "version_compatible") in trt.events and ("flag", "exclude_lean_runtime") in trt.events
    assert ("serialize_plugins", [str(plugin.resolve())]) in trt.events
    assert read_sidecar(engine)["plugin_serialized"] is True


def test_build_engine_command_passes_embed_plugin(fake_trt, tmp_path, capsys):
    from dyconv_deploy.cli.main import main

    trt, plugin = fake_trt(), tmp_path / "libdyconv.so"
    plugin.write_bytes(b"\x7fELF plugin")
    engine = tmp_path / "m.engine"
    assert main(["build-engine", _onnx(tmp_path / "m.onnx"), "-o", str(engine), "--plugin", str(plugin),
                 "--embed-plugin", "--timing-cache", str(tmp_path / "timing.cache")]) == 0
    assert ("flag", "version_compatible") in trt.events and read_sidecar(engine)["plugin_serialized"] is True
    assert ("deserialize", b"ENGINE", True) in trt.events  # a plan with host code is inspected with it allowed
    assert "TensorRT picked for the plugin layers: tensor-core-experts x1" in capsys.readouterr().out


def test_embed_plugin_without_a_plugin_library_is_refused(fake_trt, tmp_path):
    fake_trt()
    with pytest.raises(DyconvError, match="--embed-plugin needs a plugin library"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", embed_plugin=True, progress=False)


def test_contract_graph_without_plugin_option_uses_the_located_library(fake_trt, tmp_path, monkeypatch):
    trt, plugin = fake_trt(), tmp_path / "libdyconv_trt_plugin.so"
    plugin.write_bytes(b"\x7fELF plugin")
    monkeypatch.setenv("DYCONV_PLUGIN_LIBRARY", str(plugin))
    node = helper.make_node(OP_TYPE, ["x", "a", "W"], ["y"], domain=DOMAIN)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3])
                                            for n in ("x", "a")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.ones((1, 3, 3, 1, 1), np.float32), "W")])
    onnx.save(helper.make_model(graph), str(tmp_path / "plugin.onnx"))
    engine = build_engine(tmp_path / "plugin.onnx", tmp_path / "m.engine", progress=False)
    assert ("load_library", str(plugin)) in trt.events
    assert read_sidecar(engine)["plugin_sha256"] == file_sha256(plugin)


@pytest.mark.parametrize("version, network_flags", [("10.3.0", 1 << 1), ("11.1.0", 0)])
def test_fp16_parses_a_converted_model_into_a_strongly_typed_network(fake_trt, tmp_path, version, network_flags):
    trt = fake_trt(version)
    build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", fp16=True, progress=False)
    assert ("network", network_flags) in trt.events  # STRONGLY_TYPED on 10.x; 11 is always strongly typed
    assert "flag" not in trt.names()  # never the weakly typed FP16 builder flag
    weight = next(t for t in trt.parsed.graph.initializer if t.name == "w")
    assert weight.data_type == TensorProto.FLOAT16
    assert trt.parsed.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fp32 I/O kept


def test_timing_cache_is_reused_and_rewritten(fake_trt, tmp_path):
    trt, cache = fake_trt(), tmp_path / "timing.cache"
    model = _onnx(tmp_path / "m.onnx")
    build_engine(model, tmp_path / "a.engine", timing_cache=cache, progress=False)
    build_engine(model, tmp_path / "b.engine", timing_cache=cache, progress=False)
    assert [e[1] for e in trt.events if e[0] == "timing_cache"] == [b"", b"+tuned"]
    assert cache.read_bytes() == b"+tuned+tuned"


def test_a_foreign_timing_cache_is_replaced(fake_trt, tmp_path):
    trt, cache = fake_trt(), tmp_path / "timing.cache"
    cache.write_bytes(b"other-gpu")
    build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", timing_cache=cache, progress=False)
    assert [e[1] for e in trt.events if e[0] == "timing_cache"] == [b"other-gpu", b""]
    assert cache.read_bytes() == b"+tuned"


def test_a_timing_cache_tensorrt_cannot_read_is_replaced_with_one_warning(fake_trt, tmp_path, caplog):
    trt, cache = fake_trt(), tmp_path / "timing.cache"
    cache.write_bytes(b"other-version")  # create_timing_cache returns None for it
    build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", timing_cache=cache, progress=False)
    assert [e[1] for e in trt.events if e[0] == "timing_cache"] == [b"other-version", b""]
    assert cache.read_bytes() == b"+tuned"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"timing cache {cache} cannot be read" in warning and "\n" not in warning


def test_parser_errors_are_reported(fake_trt, tmp_path):
    fake_trt(parse_ok=False)
    with pytest.raises(DyconvError, match="Plugin not found"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine")


def test_failed_build_writes_nothing(fake_trt, tmp_path):
    fake_trt(build_ok=False)
    with pytest.raises(DyconvError, match="could not build an engine"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_missing_tensorrt_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependency, match=r"build-engine needs the 'tensorrt' package.*dyconv-deploy\[trt\]"):
        build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine")


def test_real_tensorrt_builds_an_engine_that_runs(tensorrt_gpu, tmp_path):
    from dyconv_deploy.runtime import load_runtime

    engine = build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", max_batch=4)
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4)).astype(np.float32)
    with load_runtime(engine, "trt") as runtime:
        y = runtime.run({"x": x})["y"]
    result = compare(y, np.einsum("oc,nchw->nohw", WEIGHT[:, :, 0, 0], x), TOLERANCES["fp32"], "y")
    assert result.passed, str(result)

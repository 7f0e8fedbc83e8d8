"""build_engine's flow against a recording stand-in for the ``tensorrt`` module, and against the real one.

The stand-in implements only the calls the TensorRT 10/11 Python API documents, records them
in order, and reads the ONNX it is asked to parse (so the test sees which model TensorRT
would get). The assertions are about our logic: call order, profile, precision per major
version, timing cache reuse, atomic outputs and the sidecar.
"""

import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dyconv_deploy.errors import DyconvError, MissingDependency
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.tolerance import TOLERANCES, compare
from dyconv_deploy.trt import plugin as plugin_module
from dyconv_deploy.trt.build import build_engine
from dyconv_deploy.trt.sidecar import file_sha256, read_sidecar


class FakeTensorRT(types.ModuleType):
    """``tensorrt`` as far as build_engine uses it; ``events`` records every call in order."""

    def __init__(self, version: str, *, parse_ok: bool = True, build_ok: bool = True):
        super().__init__("tensorrt")
        self.__version__, self.events, self.parsed = version, [], None
        trt = self

        class Logger:
            WARNING, VERBOSE = "warning", "verbose"

            def __init__(self, level):
                trt.events.append(("logger", level))

        class Registry:
            def load_library(self, path):
                trt.events.append(("load_library", path))
                return object()

        class Tensor:
            def __init__(self, value_info):
                dims = value_info.type.tensor_type.shape.dim
                self.name, self.dtype = value_info.name, "float32"
                self.shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)

        class Network:
            inputs, outputs = [], []
            num_inputs = property(lambda self: len(self.inputs))
            num_outputs = property(lambda self: len(self.outputs))

            def get_input(self, i):
                return self.inputs[i]

            def get_output(self, i):
                return self.outputs[i]

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                trt.events.append(("parse", path))
                trt.parsed = onnx.load(path)
                self.network.inputs = [Tensor(v) for v in trt.parsed.graph.input]
                self.network.outputs = [Tensor(v) for v in trt.parsed.graph.output]
                return parse_ok

            def get_error(self, i):
                return "In node 0 (importFallbackPluginImporter): Plugin not found"

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+tuned"

        class Config:
            progress_monitor, plugins_to_serialize = None, []

            def set_memory_pool_limit(self, pool, size):
                trt.events.append(("workspace", pool, size))

            def set_flag(self, flag):
                trt.events.append(("flag", flag))

            def add_optimization_profile(self, profile):
                trt.events.append(("profile", profile.shapes))

            def create_timing_cache(self, data):
                trt.events.append(("timing_cache", bytes(data)))
                self.cache = Cache(bytes(data))
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                return cache is self.cache and not cache.data.startswith(b"other-gpu")

            def __setattr__(self, name, value):
                if name == "plugins_to_serialize":
                    trt.events.append(("serialize_plugins", value))
                object.__setattr__(self, name, value)

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, mid, hi):
                self.shapes[name] = (tuple(lo), tuple(mid), tuple(hi))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                monitor = config.progress_monitor
                if monitor is not None:  # drive the monitor the way the builder does
                    monitor.phase_start("Building engine", None, 2)
                    monitor.phase_start("Tactic selection", "Building engine", 3)
                    trt.events.append(("monitor_continue", monitor.step_complete("Tactic selection", 0)))
                    monitor.phase_finish("Tactic selection")
                    monitor.phase_finish("Building engine")
                trt.events.append(("build",))
                return b"ENGINE" if build_ok else None

        class IProgressMonitor:
            def __init__(self):
                pass

        self.Logger, self.OnnxParser, self.Builder, self.IProgressMonitor = Logger, OnnxParser, Builder, IProgressMonitor
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        if int(version.split(".")[0]) < 11:  # TensorRT 11 removed the FP16 builder flag
            self.BuilderFlag = types.SimpleNamespace(FP16="fp16")
        self.nptype = lambda dtype: np.dtype(dtype).type
        self._registry = Registry()
        self.get_plugin_registry = lambda: self._registry

    def names(self):
        return [event[0] for event in self.events]


WEIGHT = np.random.default_rng(1).standard_normal((2, 3, 1, 1)).astype(np.float32)  # of _onnx's 1x1 Conv


def _onnx(path) -> str:
    weight = numpy_helper.from_array(WEIGHT, "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a FakeTensorRT; the plugin file check (ctypes, tested with the plugin) records instead."""
    def install(version="10.3.0", **kwargs):
        module = FakeTensorRT(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(plugin_module, "open_plugin_library", lambda path: module.events.append(("check", path)))
        return module

    return install


def test_tensorrt_10_fp16_flag_profile_plugin_and_sidecar(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    model, plugin = _onnx(tmp_path / "m.onnx"), tmp_path / "libdyconv.so"
    plugin.write_bytes(b"\x7fELF plugin")
    engine = build_engine(model, tmp_path / "out" / "m.engine", fp16=True, workspace_mb=64, plugin_library=plugin)

    assert trt.names().index("check") < trt.names().index("load_library") < trt.names().index("parse")
    assert trt.names().index("parse") < trt.names().index("build")
    assert ("parse", model) in trt.events  # TensorRT 10 parses the fp32 file and gets the builder flag
    assert ("flag", "fp16") in trt.events and ("workspace", "workspace", 64 << 20) in trt.events
    assert ("profile", {"x": ((1, 3, 4, 4), (8, 3, 4, 4), (32, 3, 4, 4))}) in trt.events
    assert ("serialize_plugins", [str(plugin)]) in trt.events
    assert ("monitor_continue", True) in trt.events
    assert engine.read_bytes() == b"ENGINE"
    sidecar = read_sidecar(engine)
    assert sidecar["tensorrt_version"] == "10.3.0" and sidecar["precision"] == "fp16"
    assert sidecar["onnx_sha256"] == file_sha256(model) and sidecar["plugin_sha256"] == file_sha256(plugin)
    assert sidecar["plugin_serialized"] is True
    assert sidecar["profiles"] == [{"x": {"min": [1, 3, 4, 4], "opt": [8, 3, 4, 4], "max": [32, 3, 4, 4]}}]
    assert sidecar["inputs"] == [{"name": "x", "shape": [-1, 3, 4, 4], "dtype": "float32"}]
    assert sorted(p.name for p in engine.parent.iterdir()) == ["m.engine", "m.engine.json"]


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


def test_tensorrt_11_fp16_parses_a_converted_model_without_the_flag(fake_trt, tmp_path):
    trt = fake_trt("11.1.0")
    build_engine(_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", fp16=True, progress=False)
    assert "flag" not in trt.names()
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

"""Fixtures of the TensorRT tests: ``tensorrt_gpu`` (the real module on a GPU) and ``fake_trt`` (a stand-in).

``FakeTensorRT`` implements only the calls of the TensorRT 10/11 Python API that the build
and runtime code uses, with the behaviour their documentation gives, records them in order
in ``events`` and reads the ONNX it is asked to parse (so a test sees which model TensorRT
would get). Version differences it models: the ``FP16`` builder flag exists only before 11,
``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is bit 1 in 10.x and bit 0 (ignored) in 11.
"""

import importlib
import json
import sys
import types

import numpy as np
import onnx
import pytest
import torch

from dyconv_deploy.deps import available
from dyconv_deploy.trt import plugin as plugin_module


@pytest.fixture(scope="session")
def tensorrt_gpu():
    """The ``tensorrt`` module on a machine with a CUDA device; skips saying which of the two is missing."""
    if not available("tensorrt"):
        pytest.skip("tensorrt not importable (pip install 'dyconv-deploy[trt]' on a machine with TensorRT)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (TensorRT engines build and run on a GPU)")
    return importlib.import_module("tensorrt")


# Two layers as TensorRT's inspector describes them: a convolution and a DynamicConv2d plugin layer on tactic 7.
ENGINE_LAYERS = [
    {"Name": "/stem/Conv", "LayerType": "CaskConvolution", "TacticValue": "0x4a3b2c1d00000000"},
    {"Name": "/features.1/DynamicConv2d", "LayerType": "PluginV3", "TacticValue": "0x0000000000000007"},
]


class FakeTensorRT(types.ModuleType):
    """``tensorrt`` as far as build_engine and the runtime use it; ``events`` records every call in order."""

    def __init__(self, version: str, *, parse_ok: bool = True, build_ok: bool = True,
                 engine_profile: dict[str, tuple] | None = None, engine_layers: list | None = None):
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
                if bytes(data).startswith(b"other-version"):  # a blob TensorRT cannot read at all
                    return None
                self.cache = Cache(bytes(data))
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                if cache is None:  # what pybind11 does with None for an ITimingCache argument
                    raise TypeError("set_timing_cache(): incompatible function arguments")
                # A cache tuned on another GPU is refused unless ignore_mismatch (NvInfer.h: setTimingCache).
                return cache is self.cache and (ignore_mismatch or not cache.data.startswith(b"other-gpu"))

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
                trt.events.append(("network", flags))
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

        profile = engine_profile or {"x": ((1, 3, 4, 4), (8, 3, 4, 4), (32, 3, 4, 4))}  # input -> (min, opt, max)

        class ExecutionContext:
            def set_input_shape(self, name, shape):
                trt.events.append(("set_input_shape", name, tuple(shape)))
                lo, _, hi = profile[name]
                return len(shape) == len(lo) and all(a <= d <= b for a, d, b in zip(lo, shape, hi))

        # What the engine inspector reports per layer of a DETAILED plan (TensorRT's JSON, one object a layer).
        layers = ENGINE_LAYERS if engine_layers is None else engine_layers

        class Inspector:
            def get_layer_information(self, index, layer_format):
                assert layer_format == "json"
                return json.dumps(layers[index])

        class Engine:
            num_layers = len(layers)

            def create_engine_inspector(self):
                return Inspector()

            def get_tensor_profile_shape(self, name, profile_index):
                return [list(s) for s in profile[name]] if profile_index == 0 else []

            def create_execution_context(self):
                return ExecutionContext()

        class Runtime:
            engine_host_code_allowed = False

            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, plan):
                trt.events.append(("deserialize", bytes(plan), self.engine_host_code_allowed))
                return Engine()

        self.Logger, self.OnnxParser, self.Builder, self.IProgressMonitor = Logger, OnnxParser, Builder, IProgressMonitor
        self.Runtime = Runtime
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
        self.LayerInformationFormat = types.SimpleNamespace(JSON="json")
        major = int(version.split(".")[0])
        self.BuilderFlag = types.SimpleNamespace(VERSION_COMPATIBLE="version_compatible",
                                                 EXCLUDE_LEAN_RUNTIME="exclude_lean_runtime")
        if major < 11:  # TensorRT 11 removed the FP16 builder flag
            self.BuilderFlag.FP16 = "fp16"
        # NvInfer.h: kSTRONGLY_TYPED = 1 in 10.x (after kEXPLICIT_BATCH = 0), = 0 and ignored in 11.
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1 if major < 11 else 0)
        self.nptype = lambda dtype: np.dtype(dtype).type
        self._registry = Registry()
        self.get_plugin_registry = lambda: self._registry

    def names(self):
        return [event[0] for event in self.events]



@pytest.fixture
def fake_trt(monkeypatch):
    """Install a FakeTensorRT; the plugin file check (ctypes, tested with the plugin) records instead."""
    def install(version="10.3.0", **kwargs):
        module = FakeTensorRT(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        monkeypatch.setattr(plugin_module, "open_plugin_library", lambda path: module.events.append(("check", path)))
        return module

    return install

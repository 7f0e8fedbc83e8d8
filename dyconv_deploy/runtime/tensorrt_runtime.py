"""TensorRT as a runtime: deserialise an engine and execute it asynchronously on a CUDA stream (``trt``),
or run an ONNX graph through ONNX Runtime's TensorRT execution provider (``ort-trt``, :class:`OrtTensorRTRuntime`).

Buffers are torch CUDA tensors: inputs are copied to the device, each input's shape is set
on the execution context (dynamic batch), outputs are allocated from the shapes the
context then reports, and ``execute_async_v3`` runs on a torch stream. The engine's sidecar
is checked first so a TensorRT / GPU / plugin mismatch is one clear sentence instead of a
deserialisation failure.
"""

import os
from pathlib import Path

import numpy as np

from dyconv_deploy.deps import require
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.runtime.base import Runtime, TensorSpec
from dyconv_deploy.runtime.onnxruntime_runtime import OnnxRuntimeRuntime, _spec as _ort_spec
from dyconv_deploy.trt.sidecar import check_compatible, current_environment, read_sidecar


class TensorRTRuntime(Runtime):
    """Run a serialised TensorRT engine (``.engine``/``.plan``) on the current CUDA device.

    Args:
        engine_path: the plan written by ``build-engine`` (its ``.json`` sidecar is checked
            when present).
        plugin_library: the DynamicConv2d plugin ``.so``, loaded (and hash-checked against the
            sidecar) before deserialising; located with
            :func:`dyconv_deploy.trt.plugin.locate_plugin_library` when the sidecar names one. Not
            needed for an engine built with ``--embed-plugin`` (the plan carries the library).
    """

    backend = "trt"

    def __init__(self, engine_path: str | os.PathLike, *, plugin_library: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.engine_path = Path(engine_path)
        self.plugin_library = Path(plugin_library) if plugin_library is not None else None
        self._engine = self._context = self._stream = None

    def _load(self) -> None:
        trt = require("tensorrt", for_="the trt backend")
        import torch

        if not self.engine_path.is_file():
            raise DyconvError(f"engine file not found: {self.engine_path}")
        sidecar = read_sidecar(self.engine_path)
        if self.plugin_library is None and _needs_plugin_file(sidecar):
            from dyconv_deploy.trt.plugin import locate_plugin_library

            self.plugin_library = locate_plugin_library()
        if sidecar is not None:
            check_compatible(sidecar, current_environment(trt, self.plugin_library), self.engine_path.name)
        elif not torch.cuda.is_available():
            raise DyconvError(f"{self.engine_path.name} needs a CUDA GPU but PyTorch sees none")
        embedded = sidecar is not None and bool(sidecar.get("plugin_serialized"))
        self._engine = deserialize_engine(trt, self.engine_path, plugin_library=self.plugin_library,
                                          host_code_allowed=embedded)
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        specs = [_spec(trt, self._engine, self._engine.get_tensor_name(i)) for i in range(self._engine.num_io_tensors)]
        self.input_specs = [s for s, is_input in specs if is_input]
        self.output_specs = [s for s, is_input in specs if not is_input]

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        arrays = {spec.name: np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype) for spec in self.input_specs}
        set_input_shapes(self._engine, self._context, {name: array.shape for name, array in arrays.items()},
                         self.engine_path.name)
        buffers = {}
        with torch.cuda.stream(self._stream):
            for name, array in arrays.items():
                buffers[name] = torch.from_numpy(array).to("cuda", non_blocking=True)
            for spec in self.output_specs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                buffers[spec.name] = torch.empty(shape, dtype=_torch_dtype(spec.dtype), device="cuda")
            for name, tensor in buffers.items():
                self._context.set_tensor_address(name, tensor.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise DyconvError(f"TensorRT failed to execute {self.engine_path.name} (rerun with -v for its log)")
        self._stream.synchronize()
        return {spec.name: buffers[spec.name].cpu().numpy() for spec in self.output_specs}

    def close(self) -> None:
        self._context = self._engine = self._stream = None
        super().close()


class OrtTensorRTRuntime(OnnxRuntimeRuntime):
    """ONNX Runtime with its TensorRT execution provider (``onnxruntime-gpu`` 1.22+ on a machine with TensorRT).

    ``dyconv::DynamicConv2d`` nodes become ``trt.plugins::DynamicConv2d``
    (:func:`dyconv_deploy.trt.ort_trt.to_ort_trt`) and run in TensorRT on the plugin, which is
    registered through the ``tensorrt`` package first (the EP only dlopens its
    ``trt_extra_plugin_lib_paths``, which registers nothing for a library that exports
    ``getCreators``); nodes TensorRT does not take fall back to the CUDA provider.

    Args:
        model: path to a ``.onnx`` file, or a ``ModelProto`` (any strategy).
        plugin_library: the DynamicConv2d plugin ``.so``; default
            :func:`dyconv_deploy.trt.plugin.locate_plugin_library`, for graphs with contract nodes.
        threads, spinning: as for :class:`~dyconv_deploy.runtime.onnxruntime_runtime.OnnxRuntimeRuntime`.
    """

    def __init__(self, model: str | os.PathLike, *, plugin_library: str | os.PathLike | None = None,
                 threads: int = 0, spinning: bool = True) -> None:
        super().__init__(model, device="cuda", threads=threads, spinning=spinning)
        self.backend = "ort-trt"
        self.plugin_library = Path(plugin_library) if plugin_library is not None else None

    def _load(self) -> None:
        import onnx

        from dyconv_deploy.export.onnx_export import contract_nodes
        from dyconv_deploy.trt.ort_trt import to_ort_trt

        ort = require("onnxruntime", for_="the ort-trt backend")
        available = ort.get_available_providers()
        if "TensorrtExecutionProvider" not in available:
            raise DyconvError(f"the ort-trt backend needs ONNX Runtime's TensorrtExecutionProvider, but this "
                              f"onnxruntime only has {', '.join(available)}; install onnxruntime-gpu (1.22+) on a "
                              "machine with TensorRT 10")
        proto = self.model if isinstance(self.model, onnx.ModelProto) else onnx.load(str(self.model))
        tensorrt_options = {}
        if contract_nodes(proto):
            trt = require("tensorrt", for_="the ort-trt backend (it registers the DynamicConv2d plugin)")
            from dyconv_deploy.trt.build import load_plugin_library
            from dyconv_deploy.trt.plugin import locate_plugin_library

            self.plugin_library = self.plugin_library or locate_plugin_library()
            load_plugin_library(trt, self.plugin_library)
            proto = to_ort_trt(proto)
            tensorrt_options["trt_extra_plugin_lib_paths"] = str(self.plugin_library.resolve())
        providers = [("TensorrtExecutionProvider", tensorrt_options), "CUDAExecutionProvider"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types, one per failure kind
            raise DyconvError(f"ONNX Runtime's TensorRT provider could not load the model: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        self.providers = self._session.get_providers()
        self.input_specs = [_ort_spec(i) for i in self._session.get_inputs()]
        self.output_specs = [_ort_spec(o) for o in self._session.get_outputs()]


def set_input_shapes(engine, context, shapes: dict[str, tuple[int, ...]], engine_name: str = "the engine") -> None:
    """Set each input's shape on the execution context (profile 0).

    TensorRT refuses a shape outside the profile (``set_input_shape`` returns False) and would
    then report a negative-size output; this raises a :class:`DyconvError` naming the input, its
    shape and the profile's min/opt/max instead, with the ``build-engine --shapes`` range that
    covers both the profile and the shape (when the ranks agree).
    """
    for name, shape in shapes.items():
        if not context.set_input_shape(name, tuple(shape)):
            lo, mid, hi = (tuple(dims) for dims in engine.get_tensor_profile_shape(name, 0))
            problem = (f"input {name} has shape {_dims(shape)}, outside the profile of {engine_name} (min "
                       f"{_dims(lo)}, opt {_dims(mid)}, max {_dims(hi)})")
            if len(shape) != len(lo):
                raise DyconvError(f"{problem}; the engine takes {name} with {len(lo)} dimensions")
            covering = f"{name}:{_dims(map(min, lo, shape))},{_dims(mid)},{_dims(map(max, hi, shape))}"
            raise DyconvError(f"{problem}; feed a shape in that range or rebuild the engine from its ONNX with "
                              f"`dyconv-deploy build-engine ONNX --shapes {covering}` (and the options it was "
                              "built with)")


def _dims(shape) -> str:
    """``8x3x224x224``: a shape as ``--shapes`` writes it."""
    return "x".join(map(str, shape))


def deserialize_engine(trt, engine_path: Path, *, plugin_library: Path | None, host_code_allowed: bool):
    """The ``ICudaEngine`` of the plan at ``engine_path``.

    Args:
        plugin_library: registered with TensorRT first (its creator must exist before deserialising).
        host_code_allowed: the plan carries host code (a plugin library serialised into a
            version-compatible engine), which TensorRT deserialises only when allowed.
    """
    if plugin_library is not None:
        from dyconv_deploy.trt.build import load_plugin_library

        load_plugin_library(trt, plugin_library)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    runtime.engine_host_code_allowed = host_code_allowed
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise DyconvError(f"TensorRT could not deserialise {engine_path}; rebuild it with "
                          "`dyconv-deploy build-engine` (rerun with -v for TensorRT's log)")
    return engine


def _needs_plugin_file(sidecar: dict | None) -> bool:
    """True when the engine was built with a plugin library that is not serialised into it."""
    return sidecar is not None and bool(sidecar.get("plugin_sha256")) and not sidecar.get("plugin_serialized")


def _spec(trt, engine, name: str) -> tuple[TensorSpec, bool]:
    shape = tuple(None if d < 0 else d for d in engine.get_tensor_shape(name))
    dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
    return TensorSpec(name, shape, dtype), engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT


def _torch_dtype(dtype: np.dtype):
    import torch

    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype

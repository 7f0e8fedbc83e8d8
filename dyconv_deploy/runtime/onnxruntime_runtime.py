"""ONNX Runtime as a runtime: CPU, or CUDA where ``onnxruntime-gpu`` provides it.

Graphs of the ``plugin`` strategy contain ``dyconv::DynamicConv2d`` nodes. ONNX Runtime runs
them with the project's kernel (:mod:`dyconv_deploy.runtime.ort_custom_op`, applied
automatically) or with another custom-op library given as ``custom_op_library``.
"""

import os
from pathlib import Path

import numpy as np
import onnx

from dyconv_deploy.deps import require
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.onnx_export import contract_nodes
from dyconv_deploy.io.onnx_file import session_source
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE
from dyconv_deploy.runtime.base import Runtime, TensorSpec

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}

# ONNX Runtime's type strings -> numpy dtypes.
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
           "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


class OnnxRuntimeRuntime(Runtime):
    """An ``onnxruntime.InferenceSession`` over an ONNX file or ``ModelProto``.

    Args:
        model: path to a ``.onnx`` file, or a ``ModelProto``.
        device: ``"cpu"`` or ``"cuda"`` (CUDA needs ``onnxruntime-gpu``; CPU is the fallback
            provider for nodes CUDA lacks).
        threads: intra-op threads (0 = ONNX Runtime's default, one per physical core).
        spinning: let idle intra-op threads spin (ONNX Runtime's default: lower latency for one
            session, but spinning threads take cores from the other sessions of the process, so
            ``bench``, which interleaves sessions, turns it off).
        custom_op_library: a shared library registering ``dyconv::DynamicConv2d`` under its own
            name; when omitted, graphs with the node use the project's kernel.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, device: str = "cpu", threads: int = 0,
                 spinning: bool = True, custom_op_library: str | os.PathLike | None = None) -> None:
        super().__init__()
        if device not in PROVIDERS:
            raise DyconvError(f"ONNX Runtime device must be one of {', '.join(PROVIDERS)}, got {device!r}")
        self.model, self.device, self.threads, self.spinning = model, device, threads, spinning
        self.custom_op_library = Path(custom_op_library) if custom_op_library is not None else None
        self.backend = f"ort-{device}"
        self.providers: list[str] = []
        self._session = None

    def _load(self) -> None:
        ort = require("onnxruntime", for_=f"the {self.backend} backend")
        wanted = PROVIDERS[self.device]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise DyconvError(f"{self.backend} needs ONNX Runtime's {wanted[0]}, but this onnxruntime only has "
                              f"{', '.join(available)}; install onnxruntime-gpu for CUDA")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        proto = self.model if isinstance(self.model, onnx.ModelProto) else onnx.load(str(self.model))
        if self.custom_op_library is not None:
            if not self.custom_op_library.is_file():
                raise DyconvError(f"custom-op library not found: {self.custom_op_library}")
            options.register_custom_ops_library(str(self.custom_op_library))
        elif contract_nodes(proto):  # the project's kernel: the node expanded into standard ops
            from dyconv_deploy.runtime.ort_custom_op import to_onnxruntime

            proto = to_onnxruntime(proto)
        try:
            with session_source(proto) as source:  # a file path over the 2 GiB protobuf limit
                self._session = ort.InferenceSession(source, options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types, one per failure kind
            raise DyconvError(self._explain(exc)) from exc
        self.providers = self._session.get_providers()
        self.input_specs = [_spec(i) for i in self._session.get_inputs()]
        self.output_specs = [_spec(o) for o in self._session.get_outputs()]

    def _explain(self, exc: Exception) -> str:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if self.custom_op_library is not None and OP_TYPE in str(exc):
            return (f"ONNX Runtime found no kernel for {DOMAIN}::{OP_TYPE} in {self.custom_op_library}; omit the "
                    f"library to use the project's kernel, or lower to the experts strategy: {message}")
        return f"ONNX Runtime could not load the model: {message}"

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {spec.name: np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype) for spec in self.input_specs}
        values = self._session.run(None, feeds)
        return {spec.name: value for spec, value in zip(self.output_specs, values)}

    def close(self) -> None:
        self._session = None
        super().close()


def _spec(node_arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) or d is None else str(d) for d in node_arg.shape)
    return TensorSpec(node_arg.name, shape, np.dtype(_DTYPES.get(node_arg.type, np.float32)))

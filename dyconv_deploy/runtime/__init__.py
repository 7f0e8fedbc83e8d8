"""Run stage: backends behind one small interface (PyTorch, onnx.reference, ONNX Runtime, OpenVINO, TensorRT).

``load_runtime(source, backend, **options)`` returns a :class:`Runtime`; every backend maps
``{input name: numpy array}`` to ``{output name: numpy array}``.
"""

import os
from pathlib import Path

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.runtime.base import Runtime, TensorSpec

BACKENDS = ("torch", "reference", "ort-cpu", "ort-cuda", "ort-trt", "openvino", "trt")
ENGINE_SUFFIXES = (".engine", ".plan")
# The openvino backend's choices: inference precision, and how the expert kernels are stored.
OPENVINO_PRECISIONS = ("f32", "bf16")
EXPERT_DTYPES = ("f32", "bf16", "f16")


def load_runtime(source, backend: str, **options) -> Runtime:
    """Create (not yet load) the runtime for ``source`` on ``backend``.

    Args:
        source: ``torch``: an ``nn.Module`` or a MODEL spec; ``reference`` / ``ort-*`` / ``openvino``: an
            ONNX path or ``ModelProto`` (``ort-trt``: ONNX Runtime's TensorRT provider); ``trt``: an engine path.
        backend: one of :data:`BACKENDS`.
        options: passed to the runtime class (e.g. ``threads``, ``custom_op_library``,
            ``plugin_library``, ``device``, ``use_extension``, ``precision``, ``expert_dtype``).
    """
    if backend == "torch":
        from dyconv_deploy.runtime.torch_runtime import TorchRuntime

        if isinstance(source, (str, os.PathLike)):
            from dyconv_deploy.io import load_model

            source = load_model(str(source))
        return TorchRuntime(source, **options)
    if backend == "reference":
        from dyconv_deploy.runtime.reference_runtime import ReferenceRuntime

        return ReferenceRuntime(source, **options)
    if backend in ("ort-cpu", "ort-cuda"):
        from dyconv_deploy.runtime.onnxruntime_runtime import OnnxRuntimeRuntime

        return OnnxRuntimeRuntime(source, device=backend.removeprefix("ort-"), **options)
    if backend == "ort-trt":
        from dyconv_deploy.runtime.tensorrt_runtime import OrtTensorRTRuntime

        return OrtTensorRTRuntime(source, **options)
    if backend == "openvino":
        from dyconv_deploy.runtime.openvino_runtime import OpenVinoRuntime

        return OpenVinoRuntime(source, **options)
    if backend == "trt":
        from dyconv_deploy.runtime.tensorrt_runtime import TensorRTRuntime

        return TensorRTRuntime(source, **options)
    raise DyconvError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")


def is_engine(path: str | os.PathLike) -> bool:
    """True for a TensorRT plan file name (``.engine`` / ``.plan``)."""
    return Path(path).suffix in ENGINE_SUFFIXES


__all__ = ["BACKENDS", "ENGINE_SUFFIXES", "EXPERT_DTYPES", "OPENVINO_PRECISIONS", "Runtime", "TensorSpec", "is_engine", "load_runtime"]

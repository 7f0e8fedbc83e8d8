"""OpenVINO on the CPU as a runtime, with the project's extension for ``dyconv::DynamicConv2d``.

Graphs with contract nodes are read with the extension (:mod:`~dyconv_deploy.runtime.openvino_extension`,
built on first use): each node becomes ``MixKernels`` (the per-sample kernels, streamed from the
experts once per call) followed by OpenVINO's own convolution. OpenVINO's CPU convolutions need
weights of a static shape, and a per-sample kernel's shape contains the batch, so the runtime
reads and compiles the graph once per input shape it is given, with the inputs fixed to that
shape (the file keeps its dynamic batch; the extension then picks per shape, e.g. a plain
convolution at batch 1, a batched MatMul for 1x1 layers above): the first call at a new batch
size pays a compile (about a second for MobileNetV2), later ones reuse it. Every graph is
compiled this way, standard-op ones and the static twin too, so ratios compare like with like
(OpenVINO's CPU plugin is also fastest on static shapes).

Precision: ``f32`` (default; the reference for ratios) or ``bf16`` where the CPU has it (OpenVINO's
``INFERENCE_PRECISION_HINT``; the extension's mixing stays fp32). ``expert_dtype`` stores the expert
kernels of every contract node as ``bf16``/``f16`` (half the bytes the mixing streams, rounding the
experts once; ``verify`` reports what it costs in accuracy).
"""

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from dyconv_deploy.deps import require
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.onnx_export import contract_nodes
from dyconv_deploy.runtime import EXPERT_DTYPES, OPENVINO_PRECISIONS as PRECISIONS
from dyconv_deploy.runtime.base import Runtime, TensorSpec

MIX_OP = "MixKernels"


class OpenVinoRuntime(Runtime):
    """An OpenVINO compiled model on the CPU over an ONNX file or ``ModelProto``.

    Args:
        model: path to a ``.onnx`` file (external data beside it is read), or a ``ModelProto``.
        precision: ``f32`` or ``bf16`` (needs a CPU with bf16 support; refused otherwise).
        threads: inference threads (0: OpenVINO's default, one per physical core).
        expert_dtype: storage of the contract nodes' expert kernels: ``f32``, ``bf16`` or ``f16``.
        extension: the extension library (default: :func:`~dyconv_deploy.runtime.openvino_extension.extension_library`).
        profile: collect per-node times (OpenVINO's ``PERF_COUNT``), read with :meth:`profile`.
    """

    backend = "openvino"

    def __init__(self, model: str | os.PathLike | onnx.ModelProto, *, precision: str = "f32", threads: int = 0,
                 expert_dtype: str = "f32", extension: str | os.PathLike | None = None,
                 profile: bool = False) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise DyconvError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if expert_dtype not in EXPERT_DTYPES:
            raise DyconvError(f"expert dtype must be one of {', '.join(EXPERT_DTYPES)}, got {expert_dtype!r}")
        self.model, self.precision, self.threads, self.expert_dtype = model, precision, threads, expert_dtype
        self.extension = Path(extension) if extension is not None else None
        self.collect_profile = profile
        self._core = self._proto = None
        self._compiled: dict[tuple, object] = {}  # input shapes -> infer request

    def _load(self) -> None:
        ov = require("openvino", for_="the openvino backend")
        self._core = ov.Core()
        if self.precision == "bf16" and "BF16" not in self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise DyconvError("this CPU has no bf16 support (OpenVINO's CPU capabilities lack BF16); use --precision f32")
        if isinstance(self.model, onnx.ModelProto):
            self._proto = self.model
        else:
            try:
                self._proto = onnx.load(os.fspath(self.model))
            except Exception as exc:  # onnx raises DecodeError, OSError, ... for a file that is not ONNX
                raise DyconvError(f"cannot read {self.model} as ONNX: {exc}") from exc
        if contract_nodes(self._proto):
            from dyconv_deploy.runtime.openvino_extension import extension_library

            self._core.add_extension(str(self.extension or extension_library()))
        graph = self._read(None)
        self.input_specs = [_spec(port) for port in graph.inputs]
        self.output_specs = [_spec(port) for port in graph.outputs]

    def _read(self, shapes: tuple | None):
        """The OpenVINO model of the graph, with its inputs fixed to ``shapes`` (None: as in the file)."""
        proto = self._proto
        if shapes is not None:
            proto = onnx.ModelProto.FromString(proto.SerializeToString())
            initializers = {t.name for t in proto.graph.initializer}
            inputs = [value for value in proto.graph.input if value.name not in initializers]
            for value, shape in zip(inputs, shapes):
                for dim, size in zip(value.type.tensor_type.shape.dim, shape):
                    dim.Clear()
                    dim.dim_value = size
        try:
            with tempfile.TemporaryDirectory() as folder:  # the ONNX frontend reads files
                path = Path(folder) / "model.onnx"
                onnx.save_model(proto, path)
                graph = self._core.read_model(str(path))
        except RuntimeError as exc:
            raise DyconvError(f"OpenVINO could not read the model: {_first_line(exc)}") from exc
        if self.expert_dtype != "f32":
            _store_experts(graph, self.expert_dtype)
        if self.precision == "bf16":
            _bf16_kernels(graph)
        return graph

    def _request(self, shapes: tuple):
        """The infer request compiled for these input shapes (read and compiled on first use)."""
        if shapes not in self._compiled:
            graph = self._read(shapes)
            config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY",
                      "PERF_COUNT": self.collect_profile}
            if self.threads:
                config["INFERENCE_NUM_THREADS"] = self.threads
            try:
                compiled = self._core.compile_model(graph, "CPU", config)
            except RuntimeError as exc:
                raise DyconvError(f"OpenVINO could not compile the model for inputs {list(shapes)}: "
                                  f"{_first_line(exc)}") from exc
            self._compiled[shapes] = compiled.create_infer_request()
        return self._compiled[shapes]

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = [np.ascontiguousarray(inputs[spec.name], dtype=spec.dtype) for spec in self.input_specs]
        request = self._request(tuple(feed.shape for feed in feeds))
        request.infer(feeds)
        return {spec.name: np.array(request.get_output_tensor(i).data)
                for i, spec in enumerate(self.output_specs)}

    def profile(self, inputs: dict[str, np.ndarray]) -> list[tuple[str, str, float]]:
        """``(node name, node type, milliseconds)`` of every executed node in the last run at these inputs' shapes
        (needs ``profile=True``)."""
        if not self.collect_profile:
            raise DyconvError("create the runtime with profile=True to read per-node times")
        request = self._request(tuple(np.shape(inputs[spec.name]) for spec in self.input_specs))
        return [(info.node_name, info.node_type, info.real_time.total_seconds() * 1e3)
                for info in request.profiling_info if info.status == info.Status.EXECUTED]

    def close(self) -> None:
        self._compiled.clear()
        self._proto = self._core = None
        super().close()


def _store_experts(graph, dtype: str) -> None:
    """Replace the constant expert kernels W of every MixKernels node with a ``dtype`` copy, rounded to
    nearest (OpenVINO's own f32 -> bf16 constant conversion truncates: a bias of -0.14 % on every weight,
    which a deep network compounds)."""
    ov = require("openvino", for_="the openvino backend")
    for node in graph.get_ordered_ops():
        if node.get_type_name() != MIX_OP:
            continue
        source = node.input(1).get_source_output().get_node()
        if source.get_type_name() != "Constant":
            raise DyconvError(f"{node.get_friendly_name()}: expert kernels are not a constant, cannot store them "
                              f"as {dtype}")
        node.input(1).replace_source_output(_rounded_constant(ov, np.asarray(source.get_data(), np.float32),
                                                              dtype).output(0))


def _bf16_kernels(graph) -> None:
    """Have every MixKernels node write its per-sample kernels as bf16 (rounded to nearest) for a bf16
    inference: the convolution reads bf16 weights, so f32 kernels would be written only to be converted.
    A ``Convert`` to f32 keeps the graph's types valid; the CPU plugin drops it in bf16 inference."""
    ov = require("openvino", for_="the openvino backend")
    for node in graph.get_ordered_ops():
        if node.get_type_name() != MIX_OP:
            continue
        kernels = node.output(0)
        consumers = list(kernels.get_target_inputs())
        node.set_attribute("kernel_type", "bf16")
        node.validate_and_infer_types()
        as_f32 = ov.opset13.convert(kernels, "f32").output(0)
        for consumer in consumers:
            consumer.replace_source_output(as_f32)
    graph.validate_nodes_and_infer_types()


def _rounded_constant(ov, values: np.ndarray, dtype: str):
    """An OpenVINO constant of ``values`` in ``bf16`` or ``f16``, each value rounded to nearest (even)."""
    if dtype == "f16":
        return ov.op.Constant(values.astype(np.float16))
    words = np.ascontiguousarray(values).view(np.uint32).astype(np.uint64)  # no wrap-around past 0xFFFF7FFF
    rounded = (words + 0x7FFF + ((words >> 16) & 1)) >> 16
    bits = np.where(np.isnan(values), (words >> 16) | 0x40, rounded).astype(np.uint16)  # a NaN stays a NaN
    tensor = ov.Tensor(ov.Type.bf16, ov.Shape(list(values.shape)))
    tensor.data.view(np.uint16)[...] = bits
    return ov.op.Constant(tensor)


def _spec(port) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()))


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).split("\nSummary:")[0].splitlines()  # the frontend's summary names no cause
             if line.strip() and not line.startswith("Exception from")]
    return lines[-1] if lines else type(exc).__name__

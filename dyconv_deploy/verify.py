"""Verify stage: check a graph or engine against PyTorch eager on random images, per output and batch.

Every backend of :mod:`dyconv_deploy.runtime` can be checked. ``auto`` picks: ``trt`` for an
engine file; ``reference`` for graphs with ``dyconv::DynamicConv2d`` nodes (``onnx.reference``
with the contract's reference kernel and the torch-backed Conv/MaxPool of
:mod:`dyconv_deploy.export.fast_reference`: exact, and seconds instead of minutes at 224x224);
ONNX Runtime CPU for standard-op graphs. ``ort-cpu`` on a plugin graph checks the ONNX Runtime
expansion of the node (:mod:`dyconv_deploy.runtime.ort_custom_op`).

The inputs are :func:`~dyconv_deploy.inputs.random_images`: noise with a contrast and a colour
shift per image, so that the globally pooled features every attention branch starts from differ
between the samples of a batch (plain noise pools to nearly the same vector and gives nearly the
same attention to every sample, which would let a graph that mixes up samples pass).
"""

import os
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from dyconv_deploy.errors import DyconvError, VerificationError
from dyconv_deploy.export.onnx_export import contract_nodes
from dyconv_deploy.export.settings import VERIFY_BACKENDS
from dyconv_deploy.inputs import random_images
from dyconv_deploy.io.onnx_file import session_source
from dyconv_deploy.io.model_spec import forward_errors_named
from dyconv_deploy.io.onnx_file import read_onnx
from dyconv_deploy.ops.onnx_schema import register_schema
from dyconv_deploy.runtime import Runtime, is_engine, load_runtime
from dyconv_deploy.tolerance import TOLERANCES, Comparison, Tolerance, compare

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def backend_for(source: onnx.ModelProto | str | os.PathLike) -> str:
    """The ``auto`` backend: ``trt`` for an engine file, ``reference`` for graphs with contract nodes,
    else ``ort-cpu``."""
    if not isinstance(source, onnx.ModelProto):
        if is_engine(source):
            return "trt"
        source = read_onnx(source)
    return "reference" if contract_nodes(source) else "ort-cpu"


def open_runtime(source: onnx.ModelProto | str | os.PathLike, backend: str = "auto", **options) -> Runtime:
    """The loaded runtime ``verify`` runs ``source`` on (``auto``: :func:`backend_for`)."""
    if backend not in VERIFY_BACKENDS:
        raise DyconvError(f"unknown verify backend {backend!r}; choose one of: {', '.join(VERIFY_BACKENDS)}")
    if backend == "auto":
        if not isinstance(source, onnx.ModelProto) and not is_engine(source):
            source = read_onnx(source)  # read once: backend_for and the runtime both need it
        backend = backend_for(source)
    engine = not isinstance(source, onnx.ModelProto) and is_engine(source)
    if engine != (backend == "trt"):
        raise DyconvError(f"the {backend} backend cannot run {'an engine' if engine else 'an ONNX graph'}: TensorRT "
                          "runs engines (dyconv-deploy build-engine makes one), the other backends run ONNX")
    register_schema()
    return load_runtime(source, backend, **options).load()


def verify_onnx(model: nn.Module, source: onnx.ModelProto | str | os.PathLike | Runtime,
                input_shape: Sequence[int], batches: Sequence[int], tolerance: Tolerance = TOLERANCES["fp32"], *,
                seed: int = 0, backend: str = "auto", **options) -> list[Comparison]:
    """Compare a graph, an engine or a loaded runtime with ``model`` (eager, eval mode) at each batch.

    Args:
        input_shape: ``[N, C, H, W]`` of the single input; N is replaced by each of ``batches``; the inputs
            are :func:`random_images` from ``seed``.
        backend: one of :data:`~dyconv_deploy.export.settings.VERIFY_BACKENDS` (ignored when ``source`` is a
            runtime; a runtime opened here is closed before returning).
        options: passed to the runtime (e.g. ``precision`` and ``expert_dtype`` for ``openvino``).
    Returns:
        One :class:`Comparison` per output and batch, named ``<output>@batch<N>``.
    """
    if not isinstance(source, Runtime):
        with open_runtime(source, backend, **options) as runtime:
            return verify_onnx(model, runtime, input_shape, batches, tolerance, seed=seed)
    runtime = source
    if len(runtime.input_specs) != 1:
        raise DyconvError(f"verify handles models with one input; this one has {len(runtime.input_specs)}: "
                          f"{[spec.name for spec in runtime.input_specs]}")
    name = runtime.input_specs[0].name
    graph = _graph_of(runtime)
    model = model.eval()
    comparisons = []
    for batch, x in zip(batches, verify_inputs(input_shape, batches, seed)):
        with torch.no_grad(), forward_errors_named(model, x):
            expected = _flatten(model(x))
        actual = runtime.run({name: x.numpy()})
        if len(actual) != len(expected):
            raise DyconvError(f"the ONNX file (on {runtime.backend}) has {len(actual)} outputs but the PyTorch model "
                              f"returns {len(expected)}: is MODEL the network the file was made from?")
        for (output, value), reference in zip(actual.items(), expected):
            if tuple(np.shape(value)) != tuple(reference.shape):
                raise DyconvError(f"output {output!r} at batch {batch} has shape {list(np.shape(value))} in the "
                                  f"ONNX file (on {runtime.backend}) but {list(reference.shape)} in the PyTorch "
                                  "model: is MODEL the network the file was made from?")
            comparisons.append(compare(np.asarray(value), reference, tolerance, f"{output}@batch{batch}"))
        check_numerics(graph, {name: x.numpy()}, actual, expected, batch)
    return comparisons


def check_numerics(graph: onnx.ModelProto | None, feeds: dict[str, np.ndarray], actual: dict[str, np.ndarray],
                   expected: Sequence[torch.Tensor], batch: int) -> None:
    """Fail on NaN/Inf in an output, and for an fp16 graph on any intermediate beyond the float16 range.

    ``graph`` is the ONNX model the runtime ran (``None`` for an engine: its outputs are checked, not
    traced); ``feeds`` its inputs, ``actual`` its outputs, ``expected`` PyTorch's. A NaN or Inf output is traced to the first node, in graph order, whose output has one;
    in a graph with float16 tensors every node output is checked for ``|v| > 65504`` (fp32 values a
    later cast would overflow, or fp16 infinities), also when the outputs look fine.

    Raises:
        VerificationError: naming the output (and whether PyTorch's has the same values), and the node.
    """
    fp16 = graph is not None and _has_float16(graph)
    bad = [(name, value, reference) for (name, value), reference in zip(actual.items(), expected)
           if not np.isfinite(value).all()]
    if not bad and not fp16:
        return
    first = first_bad_node(graph, feeds, fp16_range=fp16) if graph is not None else None
    if bad:
        name, value, reference = bad[0]
        counts = f"{int(np.isnan(value).sum())} NaN and {int(np.isinf(value).sum())} infinite values"
        torch_too = not torch.isfinite(reference).all()
        where = f"; the first appears at {first}" if first else ""
        raise VerificationError(f"output {name!r} at batch {batch} has {counts} (PyTorch's output "
                                f"{'has them too: the model itself produces them' if torch_too else 'has none'})"
                                f"{where}")
    if first:
        raise VerificationError(f"fp16 overflow at batch {batch}: {first}")


def first_bad_node(model: onnx.ModelProto, feeds: dict[str, np.ndarray], fp16_range: bool = False) -> str | None:
    """The first node (graph order) with a NaN or Inf in an output, or with ``fp16_range`` one beyond ±65504.

    Runs a copy of ``model`` on ONNX Runtime (CPU, no graph optimisations) with every node output
    marked as a graph output, as Polygraphy's ``--onnx-outputs mark all`` does; ``dyconv`` nodes run
    as ONNX Runtime's expansion, whose last node writes the contract node's output. Returns
    ``"node NAME (OP_TYPE), output TENSOR: ..."`` or ``None``.
    """
    import onnxruntime as ort

    from dyconv_deploy.runtime.ort_custom_op import to_onnxruntime

    marked = to_onnxruntime(model)
    outputs = {o.name for o in marked.graph.output}
    types = {v.name: v for v in marked.graph.value_info}
    for node in model.graph.node:
        marked.graph.output.extend(types.get(name) or onnx.helper.make_empty_tensor_value_info(name)
                                   for name in node.output if name and name not in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with session_source(marked) as source:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds)))
    for node in model.graph.node:
        for name in node.output:
            value = values.get(name)
            if value is None or not np.issubdtype(value.dtype, np.floating):
                continue
            problem = _value_problem(value, fp16_range)
            if problem:
                return f"node {node.name or '(unnamed)'} ({node.op_type}), output {name}: {problem}"
    return None


def _value_problem(value: np.ndarray, fp16_range: bool) -> str | None:
    if np.isnan(value).any():
        return f"{int(np.isnan(value).sum())} NaN"
    if np.isinf(value).any():
        return f"{int(np.isinf(value).sum())} infinite values" + (" (beyond the float16 range)" if fp16_range else "")
    largest = float(np.abs(value).max()) if value.size else 0.0
    if fp16_range and largest > FLOAT16_MAX:
        return f"|value| up to {largest:.3g}, beyond the float16 range (±{FLOAT16_MAX:g})"
    return None


def _graph_of(runtime: Runtime) -> onnx.ModelProto | None:
    """The ONNX model an ONNX runtime was opened from (its ``model``: a proto or a path); None for an engine."""
    source = getattr(runtime, "model", None)
    if source is None or isinstance(source, onnx.ModelProto):
        return source
    return None if is_engine(source) else read_onnx(source)


def _has_float16(model: onnx.ModelProto) -> bool:
    graph = model.graph
    infos = (*graph.input, *graph.value_info, *graph.output)
    return (any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
            or any(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in infos)
            or any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for n in graph.node for a in n.attribute))


def verify_inputs(input_shape: Sequence[int], batches: Sequence[int], seed: int = 0) -> list[torch.Tensor]:
    """The inputs :func:`verify_onnx` feeds: ``random_images`` of ``[batch, *input_shape[1:]]`` for each of
    ``batches``, drawn in that order from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [random_images((batch, *input_shape[1:]), generator) for batch in batches]


def _flatten(outputs) -> list[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else [o for o in outputs]

"""Check an exported graph or engine against PyTorch eager on random inputs, per output and batch.

Every backend of :mod:`dyconv_deploy.runtime` can be checked. ``auto`` picks: ``trt`` for an
engine file; ``reference`` for graphs with ``dyconv::DynamicConv2d`` nodes (``onnx.reference``
with the contract's reference kernel and the torch-backed Conv/MaxPool of
:mod:`dyconv_deploy.export.fast_reference`: exact, and seconds instead of minutes at 224x224);
ONNX Runtime CPU for standard-op graphs. ``ort-cpu`` on a plugin graph checks the ONNX Runtime
expansion of the node (:mod:`dyconv_deploy.runtime.ort_custom_op`).
"""

import os
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.onnx_export import contract_nodes
from dyconv_deploy.export.settings import VERIFY_BACKENDS
from dyconv_deploy.ops.onnx_schema import register_schema
from dyconv_deploy.runtime import Runtime, is_engine, load_runtime
from dyconv_deploy.tolerance import TOLERANCES, Comparison, Tolerance, compare


def backend_for(source: onnx.ModelProto | str | os.PathLike) -> str:
    """The ``auto`` backend: ``trt`` for an engine file, ``reference`` for graphs with contract nodes,
    else ``ort-cpu``."""
    if not isinstance(source, onnx.ModelProto):
        if is_engine(source):
            return "trt"
        source = onnx.load(os.fspath(source))
    return "reference" if contract_nodes(source) else "ort-cpu"


def open_runtime(source: onnx.ModelProto | str | os.PathLike, backend: str = "auto", **options) -> Runtime:
    """The loaded runtime ``verify`` runs ``source`` on (``auto``: :func:`backend_for`)."""
    if backend not in VERIFY_BACKENDS:
        raise DyconvError(f"unknown verify backend {backend!r}; choose one of: {', '.join(VERIFY_BACKENDS)}")
    if backend == "auto":
        if not isinstance(source, onnx.ModelProto) and not is_engine(source):
            source = onnx.load(os.fspath(source))  # read once: backend_for and the runtime both need it
        backend = backend_for(source)
    engine = not isinstance(source, onnx.ModelProto) and is_engine(source)
    if engine != (backend == "trt"):
        raise DyconvError(f"the {backend} backend cannot run {'an engine' if engine else 'an ONNX graph'}: TensorRT "
                          "runs engines (dyconv-deploy build-engine makes one), the other backends run ONNX")
    register_schema()
    return load_runtime(source, backend, **options).load()


def verify_onnx(model: nn.Module, source: onnx.ModelProto | str | os.PathLike | Runtime,
                input_shape: Sequence[int], batches: Sequence[int], tolerance: Tolerance = TOLERANCES["fp32"], *,
                seed: int = 0, backend: str = "auto") -> list[Comparison]:
    """Compare a graph, an engine or a loaded runtime with ``model`` (eager, eval mode) at each batch.

    Args:
        input_shape: ``[N, C, H, W]`` of the single input; N is replaced by each of ``batches``.
        backend: one of :data:`~dyconv_deploy.export.settings.VERIFY_BACKENDS` (ignored when ``source`` is a
            runtime; a runtime opened here is closed before returning).
    Returns:
        One :class:`Comparison` per output and batch, named ``<output>@batch<N>``.
    """
    if not isinstance(source, Runtime):
        with open_runtime(source, backend) as runtime:
            return verify_onnx(model, runtime, input_shape, batches, tolerance, seed=seed)
    runtime = source
    if len(runtime.input_specs) != 1:
        raise DyconvError(f"verify handles models with one input; this one has {len(runtime.input_specs)}: "
                          f"{[spec.name for spec in runtime.input_specs]}")
    name = runtime.input_specs[0].name
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    comparisons = []
    for batch in batches:
        x = torch.randn(batch, *input_shape[1:], generator=generator)
        with torch.no_grad():
            expected = _flatten(model(x))
        actual = runtime.run({name: x.numpy()})
        if len(actual) != len(expected):
            raise DyconvError(f"the {runtime.backend} model has {len(actual)} outputs but the PyTorch model returns "
                              f"{len(expected)}")
        comparisons += [compare(np.asarray(value), reference, tolerance, f"{output}@batch{batch}")
                        for (output, value), reference in zip(actual.items(), expected)]
    return comparisons


def _flatten(outputs) -> list[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else [o for o in outputs]

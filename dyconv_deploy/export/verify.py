"""Check an exported graph against PyTorch eager on random inputs, per output and batch size.

Backends: graphs of standard ops run on ONNX Runtime (CPU); graphs with
``dyconv::DynamicConv2d`` nodes run on ``onnx.reference`` with the contract's reference
kernel and the torch-backed Conv/MaxPool of :mod:`dyconv_deploy.export.fast_reference`
(exact, and seconds instead of minutes at 224x224).
"""

import os
from typing import Callable, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from dyconv_deploy.deps import require
from dyconv_deploy.errors import DyconvError
from dyconv_deploy.export.onnx_export import contract_nodes
from dyconv_deploy.ops.onnx_schema import register_schema
from dyconv_deploy.tolerance import TOLERANCES, Comparison, Tolerance, compare

Session = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def backend_for(proto: onnx.ModelProto) -> str:
    """``"reference"`` for graphs with contract nodes, else ``"onnxruntime"``."""
    return "reference" if contract_nodes(proto) else "onnxruntime"


def open_session(proto: onnx.ModelProto, backend: str) -> Session:
    """A callable ``{input name: array} -> [outputs]`` on ``backend``."""
    if backend == "reference":
        from onnx.reference import ReferenceEvaluator

        from dyconv_deploy.export.fast_reference import FAST_REFERENCE_OPS
        from dyconv_deploy.ops.onnx_reference import REFERENCE_OPS

        register_schema()
        evaluator = ReferenceEvaluator(proto, new_ops=REFERENCE_OPS + FAST_REFERENCE_OPS)
        return lambda feeds: list(evaluator.run(None, feeds))
    if backend == "onnxruntime":
        ort = require("onnxruntime", for_="verify")
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    raise DyconvError(f"unknown verify backend {backend!r}; choose reference or onnxruntime")


def verify_onnx(model: nn.Module, onnx_model: onnx.ModelProto | str | os.PathLike, input_shape: Sequence[int],
                batches: Sequence[int], tolerance: Tolerance = TOLERANCES["fp32"], *, seed: int = 0,
                backend: str | None = None) -> list[Comparison]:
    """Compare ``onnx_model`` with ``model`` (eager, eval mode) at each batch size.

    Args:
        input_shape: ``[N, C, H, W]`` of the single input; N is replaced by each of ``batches``.
        backend: ``"reference"`` or ``"onnxruntime"``; None picks :func:`backend_for`.
    Returns:
        One :class:`Comparison` per output and batch, named ``<output>@batch<N>``.
    """
    proto = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(os.fspath(onnx_model))
    inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1:
        raise DyconvError(f"verify handles models with one input; this graph has {len(inputs)}: {inputs}")
    outputs = [o.name for o in proto.graph.output]
    session = open_session(proto, backend or backend_for(proto))
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    comparisons = []
    for batch in batches:
        x = torch.randn(batch, *input_shape[1:], generator=generator)
        with torch.no_grad():
            expected = _flatten(model(x))
        actual = session({inputs[0]: x.numpy()})
        if len(actual) != len(expected):
            raise DyconvError(f"the ONNX graph has {len(actual)} outputs but the model returns {len(expected)}")
        comparisons += [compare(a, e, tolerance, f"{name}@batch{batch}")
                        for name, a, e in zip(outputs, actual, expected)]
    return comparisons


def _flatten(outputs) -> list[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else [o for o in outputs]

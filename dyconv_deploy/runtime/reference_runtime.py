"""``onnx.reference`` as a runtime: slow, pure Python, and able to run ``dyconv::DynamicConv2d``.

The custom node is evaluated with the contract's reference math
(:data:`dyconv_deploy.ops.onnx_reference.REFERENCE_OPS`) and Conv/MaxPool with the exact
torch-backed kernels of :mod:`dyconv_deploy.export.fast_reference` (the same set ``verify``
uses), so ``plugin``-strategy graphs are checkable on any machine in seconds.
"""

import os

import numpy as np
import onnx

from dyconv_deploy.runtime.base import Runtime, onnx_io_specs


class ReferenceRuntime(Runtime):
    """Evaluate an ONNX file or ``ModelProto`` with ``onnx.reference.ReferenceEvaluator``."""

    backend = "reference"

    def __init__(self, model: str | os.PathLike | onnx.ModelProto) -> None:
        super().__init__()
        self.model = model
        self._evaluator = None

    def _load(self) -> None:
        from onnx.reference import ReferenceEvaluator

        from dyconv_deploy.export.fast_reference import FAST_REFERENCE_OPS
        from dyconv_deploy.ops.onnx_reference import REFERENCE_OPS

        proto = self.model if isinstance(self.model, onnx.ModelProto) else onnx.load(str(self.model))
        self._evaluator = ReferenceEvaluator(proto, new_ops=REFERENCE_OPS + FAST_REFERENCE_OPS)
        self.input_specs, self.output_specs = onnx_io_specs(proto)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._evaluator.run(None, inputs)
        return {spec.name: np.asarray(value) for spec, value in zip(self.output_specs, values)}

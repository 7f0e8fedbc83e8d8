"""``onnx.reference`` kernel for ``dyconv::DynamicConv2d`` (the CPU reference backend).

Pass :data:`REFERENCE_OPS` as ``new_ops`` to ``onnx.reference.ReferenceEvaluator`` to
run graphs of the ``plugin`` strategy on a CPU.
"""

import numpy as np
import torch
from onnx.reference.op_run import OpRun

from dyconv_deploy.ops.contract import DOMAIN
from dyconv_deploy.ops.reference import dynamic_conv2d_reference


def run_dynamic_conv2d(x, attention, weight, bias=None, spatial=None, strides=None, pads=None, dilations=None,
                       group=None) -> np.ndarray:
    """Evaluate the contract on numpy arrays (fp16 inputs are computed in fp32 and cast back)."""
    dtype = x.dtype
    with torch.no_grad():
        y = dynamic_conv2d_reference(_to_torch(x), _to_torch(attention), _to_torch(weight), _to_torch(bias),
                                     _to_torch(spatial), strides or (1, 1), pads or (0, 0, 0, 0),
                                     dilations or (1, 1), group or 1)
    return y.numpy().astype(dtype)


def _to_torch(array):
    return None if array is None else torch.tensor(np.asarray(array), dtype=torch.float32)


class DynamicConv2d(OpRun):
    """``onnx.reference`` op: evaluates the node with :func:`run_dynamic_conv2d`."""

    op_domain = DOMAIN

    def _run(self, X, A, W, B=None, S=None, strides=None, pads=None, dilations=None, group=None,
             plugin_version=None, plugin_namespace=None):  # the TensorRT plugin attributes do not change the math
        return (run_dynamic_conv2d(X, A, W, B, S, strides, pads, dilations, group),)


REFERENCE_OPS = [DynamicConv2d]

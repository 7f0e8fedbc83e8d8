"""Torch-backed ``onnx.reference`` kernels for the standard ops that are slow in pure numpy.

The stock ``onnx.reference`` Conv and MaxPool loop in Python (minutes for a 224x224
network); these subclasses compute the common case (explicit or no padding, 1-3 spatial
dims, no MaxPool indices) with ``torch.nn.functional`` in float32 and defer every other
case to the stock kernel, so results stay exact. :data:`FAST_REFERENCE_OPS` plus
:data:`dyconv_deploy.ops.onnx_reference.REFERENCE_OPS` evaluate a ``plugin`` graph in seconds.
"""

import numpy as np
import torch
import torch.nn.functional as F
from onnx.reference.ops.op_conv import Conv as _StockConv
from onnx.reference.ops.op_max_pool import MaxPool as _StockMaxPool

_EXPLICIT_PADDING = (None, "NOTSET", "VALID", b"NOTSET", b"VALID")


def _tensor(array: np.ndarray) -> torch.Tensor:
    """Share memory with ``array`` when it is contiguous and writable (torch needs both), else copy."""
    return torch.from_numpy(np.require(array, requirements=("C", "W")))


def _padded(x: torch.Tensor, pads, spatial: int, value: float) -> torch.Tensor:
    """Apply ONNX ``pads`` ``(x1_begin, x2_begin, ..., x1_end, x2_end)`` with ``value``."""
    if not pads or not any(pads):
        return x
    torch_pads = []
    for axis in reversed(range(spatial)):  # F.pad lists the last axis first
        torch_pads += [pads[axis], pads[axis + spatial]]
    return F.pad(x, torch_pads, value=value)


class Conv(_StockConv):
    """ONNX Conv through ``torch.nn.functional.conv{1,2,3}d``."""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None,
             strides=None):
        spatial = X.ndim - 2
        if auto_pad not in _EXPLICIT_PADDING or not 1 <= spatial <= 3 or X.dtype != np.float32:
            return super()._run(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
                                kernel_shape=kernel_shape, pads=pads, strides=strides)
        conv = getattr(F, f"conv{spatial}d")
        pads = None if auto_pad in ("VALID", b"VALID") else pads
        with torch.no_grad():
            x = _padded(_tensor(X), pads, spatial, 0.0)
            y = conv(x, _tensor(W),
                     None if B is None else _tensor(B),
                     stride=tuple(strides or (1,) * spatial), dilation=tuple(dilations or (1,) * spatial),
                     groups=group or 1)
        return (y.numpy(),)


class MaxPool(_StockMaxPool):
    """ONNX MaxPool (values only) through ``torch.nn.functional.max_pool{1,2,3}d``."""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
             storage_order=None, strides=None):
        spatial = x.ndim - 2
        if (auto_pad not in _EXPLICIT_PADDING or not 1 <= spatial <= 3 or len(self.onnx_node.output) > 1
                or x.dtype != np.float32):
            return super()._run(x, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                                kernel_shape=kernel_shape, pads=pads, storage_order=storage_order, strides=strides)
        pool = getattr(F, f"max_pool{spatial}d")
        pads = None if auto_pad in ("VALID", b"VALID") else pads
        with torch.no_grad():
            t = _padded(_tensor(x), pads, spatial, float("-inf"))
            y = pool(t, tuple(kernel_shape), stride=tuple(strides or (1,) * spatial),
                     dilation=tuple(dilations or (1,) * spatial), ceil_mode=bool(ceil_mode))
        return (y.numpy(),)


FAST_REFERENCE_OPS = [Conv, MaxPool]

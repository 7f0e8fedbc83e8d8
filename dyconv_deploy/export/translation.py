"""``torch.ops.dyconv.dynamic_conv2d`` in each ONNX exporter's language: one contract node.

:func:`dynamo_translation` goes into the dynamo exporter's ``custom_translation_table``;
:func:`register_torchscript_symbolic` registers the TorchScript exporter's symbolic. Both
emit ``dyconv::DynamicConv2d(X, A, W[, B][, S])`` with ONNX Conv's attribute names; an
absent optional input before a present one becomes ``""``.
"""

from typing import Sequence

import onnxscript
import torch

from dyconv_deploy import ops  # noqa: F401  (registers torch.ops.dyconv.dynamic_conv2d)
from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE, OP_VERSION, TORCH_OP
from dyconv_deploy.ops.onnx_schema import register_schema

register_schema()  # onnxscript reads the output count of the op from its schema
_DYCONV = onnxscript.values.Opset(DOMAIN, OP_VERSION)


def dynamo_translation(x, attention, weight, bias, spatial, stride: Sequence[int], padding: Sequence[int],
                       dilation: Sequence[int], groups: int):
    """Traced by the dynamo exporter in place of the torch op (inputs are onnxscript values or None)."""
    return getattr(_DYCONV, OP_TYPE)(x, attention, weight, bias, spatial, strides=stride, pads=padding,
                                     dilations=dilation, group=groups)


def _torchscript_symbolic(g, x, attention, weight, bias, spatial, stride, padding, dilation, groups):
    from torch.onnx import symbolic_helper

    inputs = [x, attention, weight, bias, spatial]
    while symbolic_helper._is_none(inputs[-1]):  # trailing absent inputs are dropped, inner ones stay ""
        inputs.pop()
    y = g.op(f"{DOMAIN}::{OP_TYPE}", *inputs,
             strides_i=symbolic_helper._parse_arg(stride, "is"),
             pads_i=symbolic_helper._parse_arg(padding, "is"),
             dilations_i=symbolic_helper._parse_arg(dilation, "is"),
             group_i=symbolic_helper._parse_arg(groups, "i"))
    y.setType(x.type().with_sizes([None] * 4))  # rank and dtype; the ONNX schema infers the sizes
    return y


def register_torchscript_symbolic(opset: int) -> None:
    """Register the symbolic of the contract op for the TorchScript exporter at ``opset`` (idempotent)."""
    torch.onnx.register_custom_op_symbolic(TORCH_OP, _torchscript_symbolic, opset)


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``."""
    return {torch.ops.dyconv.dynamic_conv2d.default: dynamo_translation}

"""The contract op ``dyconv::DynamicConv2d``: reference math, torch op, ONNX schema and reference kernel."""

from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE, OP_VERSION
from dyconv_deploy.ops.reference import (aggregate_bias, aggregate_kernels, dynamic_conv2d_reference,
                                         per_sample_dynamic_conv2d)
from dyconv_deploy.ops.torch_op import dynamic_conv2d

__all__ = ["DOMAIN", "OP_TYPE", "OP_VERSION", "aggregate_bias", "aggregate_kernels", "dynamic_conv2d",
           "dynamic_conv2d_reference", "per_sample_dynamic_conv2d"]

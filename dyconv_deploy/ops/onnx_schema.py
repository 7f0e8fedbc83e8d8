"""ONNX schema of ``dyconv::DynamicConv2d`` so ``onnx.checker`` and shape inference know it.

:func:`register_schema` is idempotent; the exporter, the lowering passes and ``verify``
call it before checking a graph that contains the node.
"""

import onnx
from onnx import defs

from dyconv_deploy.ops.contract import DOMAIN, OP_TYPE, OP_VERSION, output_size

_DOC = ("Per-sample dynamic convolution: Y[n] = conv2d(X[n], (sum_k A[n,k] W[k]) * S[n], sum_k A[n,k] B[k]); "
        "A of rank 3 mixes each output channel separately. Attributes as ONNX Conv.")


def _infer(ctx) -> None:
    x_type = ctx.get_input_type(0)
    w_type = ctx.get_input_type(2)
    out = onnx.TypeProto()
    out.tensor_type.elem_type = x_type.tensor_type.elem_type
    x_dims = list(x_type.tensor_type.shape.dim) if x_type.tensor_type.HasField("shape") else []
    w_dims = list(w_type.tensor_type.shape.dim) if w_type.tensor_type.HasField("shape") else []
    if len(x_dims) == 4 and len(w_dims) == 5:
        attrs = {name: ctx.get_attribute(name) for name in ("strides", "pads", "dilations")}
        strides = list(attrs["strides"].ints) if attrs["strides"] else [1, 1]
        pads = list(attrs["pads"].ints) if attrs["pads"] else [0, 0, 0, 0]
        dilations = list(attrs["dilations"].ints) if attrs["dilations"] else [1, 1]
        shape = out.tensor_type.shape
        shape.dim.add().CopyFrom(x_dims[0])
        shape.dim.add().CopyFrom(w_dims[1])
        for axis in range(2):
            dim = shape.dim.add()
            size, kernel = x_dims[2 + axis], w_dims[3 + axis]
            if size.HasField("dim_value") and kernel.HasField("dim_value"):
                dim.dim_value = output_size(size.dim_value, pads[axis], pads[axis + 2], kernel.dim_value,
                                            strides[axis], dilations[axis])
    ctx.set_output_type(0, out)


def _schema() -> defs.OpSchema:
    param = defs.OpSchema.FormalParameter
    optional = defs.OpSchema.FormalParameterOption.Optional
    attr = defs.OpSchema.Attribute
    ints = defs.OpSchema.AttrType.INTS
    schema = defs.OpSchema(
        OP_TYPE, DOMAIN, OP_VERSION, _DOC,
        inputs=[param("X", "T", "activations [N, C, H, W]"),
                param("A", "T", "attention [N, K] or [N, K, M]"),
                param("W", "T", "expert kernels [K, M, C/group, kH, kW]"),
                param("B", "T", "expert biases [K, M]", param_option=optional),
                param("S", "T", "spatial kernel attention [N, kH, kW]", param_option=optional)],
        outputs=[param("Y", "T", "output [N, M, Ho, Wo]")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 or float16 (fp32 accumulation)")],
        attributes=[attr("strides", ints, "stride along H, W", required=False),
                    attr("pads", ints, "padding (top, left, bottom, right)", required=False),
                    attr("dilations", ints, "dilation along H, W", required=False),
                    attr("group", defs.OpSchema.AttrType.INT, "convolution groups", required=False),
                    attr("plugin_version", defs.OpSchema.AttrType.STRING, "TensorRT plugin version",
                         required=False),
                    attr("plugin_namespace", defs.OpSchema.AttrType.STRING, "TensorRT plugin namespace",
                         required=False)],
    )
    schema.set_type_and_shape_inference_function(_infer)
    return schema


def register_schema() -> None:
    """Register the schema with onnx (no-op when already registered)."""
    try:
        defs.get_schema(OP_TYPE, OP_VERSION, DOMAIN)
    except defs.SchemaError:
        defs.register_schema(_schema())

"""The ONNX side of the contract: schema, checker, shape inference and the ``onnx.reference`` kernel."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from dyconv_deploy.ops import DOMAIN, OP_TYPE, OP_VERSION, dynamic_conv2d_reference
from dyconv_deploy.ops.contract import output_size
from dyconv_deploy.ops.onnx_reference import REFERENCE_OPS
from dyconv_deploy.ops.onnx_schema import register_schema
from dyconv_deploy.tolerance import TOLERANCES, compare

from op_cases import CASES


def contract_model(case, inputs: dict, elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """One ``dyconv::DynamicConv2d`` node; X and A have a symbolic batch, W/B/S are graph inputs."""
    names = {"x": "X", "attention": "A", "weight": "W", "bias": "B", "spatial": "S"}
    graph_inputs = []
    for key, value in inputs.items():
        if value is not None:
            shape = ["N", *value.shape[1:]] if key in ("x", "attention", "spatial") else list(value.shape)
            graph_inputs.append(helper.make_tensor_value_info(names[key], elem_type, shape))
    node = helper.make_node(OP_TYPE, [names[k] if v is not None else "" for k, v in inputs.items()], ["Y"],
                            domain=DOMAIN, strides=list(case.stride), pads=list(case.padding),
                            dilations=list(case.dilation), group=case.groups)
    graph = helper.make_graph([node], "contract", graph_inputs,
                              [helper.make_tensor_value_info("Y", elem_type, [None] * 4)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, OP_VERSION)])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_schema_shape_inference_and_reference_kernel(case):
    register_schema()
    inputs = case.inputs()
    model = contract_model(case, inputs)
    onnx.checker.check_model(model, full_check=True)

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    expected_hw = [output_size(case.size, case.padding[a], case.padding[a + 2], case.kernel, case.stride[a],
                               case.dilation[a]) for a in range(2)]
    assert [d.dim_param or d.dim_value for d in dims] == ["N", case.m, *expected_hw]

    feeds = {i.name: inputs[key].numpy() for i, key in zip(model.graph.input,
                                                           [k for k, v in inputs.items() if v is not None])}
    (y,) = ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)
    result = compare(y, dynamic_conv2d_reference(**inputs, **case.conv_args()), TOLERANCES["layer"])
    assert result.passed, str(result)


def test_reference_kernel_keeps_float16():
    register_schema()
    case = CASES[0]
    inputs = {k: v.half() if v is not None else None for k, v in case.inputs().items()}
    model = contract_model(case, inputs, TensorProto.FLOAT16)
    feeds = {i.name: v.numpy() for i, v in zip(model.graph.input, [v for v in inputs.values() if v is not None])}
    (y,) = ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)
    assert y.dtype == np.float16
    expected = dynamic_conv2d_reference(**{k: v.float() if v is not None else None for k, v in inputs.items()},
                                        **case.conv_args())
    assert compare(y, expected, TOLERANCES["fp16"]).passed

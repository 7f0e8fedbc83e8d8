"""``fold_batchnorm``: a per-channel affine after the node goes into W and B (exactly)."""

import pytest
from graphs import Node, assert_matches, contract_model, op_types, random_feeds, run_reference
from onnx import TensorProto, helper

from dyconv_deploy.lower.fold_bn import fold_batchnorm

SOFTMAX = Node("softmax-3x3-groups2", groups=2)
SIGMOID_SPATIAL = Node("sigmoid-spatial", routing="Sigmoid", spatial=True, bias=False)
DYNET_NO_BIAS = Node("softmax-dynet-nobias", per_channel=True, bias=False)


@pytest.mark.parametrize("affine", ["bn", "mul_add"])
@pytest.mark.parametrize("node, remaining", [pytest.param(SOFTMAX, [], id="softmax-into-bias"),
                                             pytest.param(DYNET_NO_BIAS, [], id="softmax-dynet-creates-bias"),
                                             pytest.param(SIGMOID_SPATIAL, ["Add"], id="sigmoid-keeps-shift")])
def test_affine_is_folded(node, remaining, affine):
    model = contract_model(node, affine=affine)
    folded = fold_batchnorm(model)
    ops = op_types(folded)
    assert ops[ops.index("DynamicConv2d") + 1:] == remaining  # the shift stays only without softmax
    feeds = random_feeds(model, 3)
    assert_matches(run_reference(folded, feeds), run_reference(model, feeds))


def test_affine_with_another_reader_of_the_conv_is_kept():
    model = contract_model(SOFTMAX, affine="bn")
    model.graph.output.append(helper.make_tensor_value_info("conv", TensorProto.FLOAT, None))
    assert op_types(fold_batchnorm(model)).count("BatchNormalization") == 1


def test_a_per_pixel_scale_is_not_folded():
    """A Mul by a [1, M, Ho, Wo] constant is not one scale per channel: it stays, and the output is unchanged."""
    import numpy as np
    from onnx import numpy_helper

    model = contract_model(SOFTMAX, affine="mul_add")
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[1:]]
    scale = next(t for t in model.graph.initializer if t.name == "scale")
    scale.CopyFrom(numpy_helper.from_array(
        np.random.default_rng(1).uniform(0.5, 1.5, (1, *dims)).astype(np.float32), "scale"))
    folded = fold_batchnorm(model)
    assert "Mul" in op_types(folded)
    feeds = random_feeds(model, 3)
    assert_matches(run_reference(folded, feeds), run_reference(model, feeds))


def test_a_softmax_over_another_axis_keeps_the_shift_apart():
    """Only a softmax over the experts sums to 1 per sample, which lets the shift go into the expert biases."""
    model = contract_model(SOFTMAX, affine="mul_add")
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.attribute[0].i = 0  # over the batch
    folded = fold_batchnorm(model)
    ops = op_types(folded)
    assert ops[ops.index("DynamicConv2d") + 1:] == ["Add"]
    feeds = random_feeds(model, 3)
    assert_matches(run_reference(folded, feeds), run_reference(model, feeds))

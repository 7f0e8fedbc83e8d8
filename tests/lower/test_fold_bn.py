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

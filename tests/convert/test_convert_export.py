"""Converted foreign models export with a dynamic batch, lower with every strategy and verify at batch 1 and 3.

The comparisons can fail: the original's output depends on its input, the converted layers' attention
varies across verify's inputs, and rolling it along the batch fails verification (:mod:`guards`).
"""

import pytest
import torch
from cases import SHAPE, images, mixed_model
from guards import assert_attention_varies, assert_depends_on_input, assert_fails, rolled_attention

from dyconv_deploy.convert import convert_model
from dyconv_deploy.export import contract_nodes, export_onnx
from dyconv_deploy.lower import STRATEGIES, lower
from dyconv_deploy.nn import DynamicConvBase
from dyconv_deploy.tolerance import TOLERANCES
from dyconv_deploy.verify import verify_inputs, verify_onnx

EQUIVALENT = [s for s in STRATEGIES if s != "static"]  # static drops the attention: a latency baseline only


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    model = mixed_model()
    converted, report = convert_model(model, images())
    report.raise_for_unknown()
    return model, converted, export_onnx(converted, images())


def test_verify_inputs_give_every_layer_its_own_attention(exported):
    model, converted, _ = exported
    (x,) = verify_inputs(SHAPE, [3])
    assert_depends_on_input(model, x)
    assert_attention_varies(converted, x)


def test_one_contract_node_per_converted_dynamic_conv(exported):
    _, converted, proto = exported
    dynamic = [m for m in converted.modules() if isinstance(m, DynamicConvBase)]
    assert len(contract_nodes(proto)) == len(dynamic) == 10
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("strategy", EQUIVALENT)
def test_every_strategy_matches_the_original_model(exported, strategy, batch):
    model, _, proto = exported
    lowered = lower(proto, strategy, static_batch=batch if strategy == "grouped" else None)
    for comparison in verify_onnx(model, lowered, SHAPE, [batch], TOLERANCES["fp32"]):
        assert comparison.passed, str(comparison)
    if batch > 1:
        with rolled_attention(exported[1]):
            assert_fails(verify_onnx(exported[1], lowered, SHAPE, [batch]), "giving sample n sample n-1's attention")


def test_static_baseline_lowers(exported):
    assert contract_nodes(lower(exported[2], "static")) == []


"""``static``: plain Conv with the mean expert kernel, attention removed, flagged as not equivalent."""

import logging

import numpy as np
import pytest
from graphs import NODES, contract_model, odconv_model, op_types, random_feeds, run_onnxruntime, run_reference
from onnx import numpy_helper

from dyconv_deploy.lower.static import EQUIVALENCE_KEY, lower_static


@pytest.mark.parametrize("node", NODES[2:5], ids=str)
def test_static_is_one_conv_with_the_mean_kernel(node, caplog):
    model = contract_model(node)
    with caplog.at_level(logging.WARNING, logger="dyconv_deploy"):
        lowered = lower_static(model)
    assert op_types(lowered) == ["Conv"]
    assert [i.name for i in lowered.graph.input] == ["X"]  # the attention inputs are gone
    weight = next(numpy_helper.to_array(t) for t in lowered.graph.initializer if t.name.endswith("weight"))
    expected = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W")).mean(axis=0)
    np.testing.assert_allclose(weight, expected, rtol=1e-6)
    assert {p.key: p.value for p in lowered.metadata_props}[EQUIVALENCE_KEY] == "false"
    assert "NOT numerically equivalent" in caplog.text
    feeds = random_feeds(model, 2)
    assert run_onnxruntime(lowered, feeds)[0].shape == run_reference(model, feeds)[0].shape


def test_odconv_channel_and_filter_scales_are_removed():
    lowered = lower_static(odconv_model())
    assert op_types(lowered) == ["Conv"]


def test_a_scale_computed_from_the_output_is_kept():
    lowered = lower_static(odconv_model(scale_after_from_output=True))
    assert op_types(lowered) == ["Conv", "GlobalAveragePool", "Conv", "Sigmoid", "Mul"]

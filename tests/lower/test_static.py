"""``static``: plain Conv with the mean expert kernel, attention removed, flagged as not equivalent."""

import logging

import pytest
import torch
import torch.nn.functional as F
from graphs import (NODES, assert_matches, batch_dim, contract_model, odconv_model, op_types, random_feeds,
                    run_onnxruntime)
from onnx import numpy_helper

from dyconv_deploy.lower.static import EQUIVALENCE_KEY, lower_static


@pytest.mark.parametrize("node", NODES[2:5], ids=str)
def test_static_is_one_conv_with_the_mean_kernel(node, caplog):
    model = contract_model(node)
    with caplog.at_level(logging.WARNING, logger="dyconv_deploy"):
        lowered = lower_static(model)
    assert op_types(lowered) == ["Conv"]
    assert [i.name for i in lowered.graph.input] == ["X"]  # the attention inputs are gone
    assert batch_dim(lowered) == "batch"
    assert {p.key: p.value for p in lowered.metadata_props}[EQUIVALENCE_KEY] == "false"
    assert "NOT numerically equivalent" in caplog.text
    initializers = {t.name: torch.tensor(numpy_helper.to_array(t)) for t in model.graph.initializer}
    top, left, bottom, right = node.pads
    for batch in (1, 3):
        x = random_feeds(model, batch)["X"]
        expected = F.conv2d(F.pad(torch.from_numpy(x), (left, right, top, bottom)), initializers["W"].mean(0),
                            initializers["B"].mean(0), node.strides, 0, node.dilations, node.groups)
        assert_matches(run_onnxruntime(lowered, {"X": x}), [expected.numpy()])


def test_odconv_channel_and_filter_scales_are_removed():
    lowered = lower_static(odconv_model())
    assert op_types(lowered) == ["Conv"]


def test_a_scale_computed_from_the_output_is_kept():
    lowered = lower_static(odconv_model(scale_after_from_output=True))
    assert op_types(lowered) == ["Conv", "GlobalAveragePool", "Conv", "Sigmoid", "Mul"]

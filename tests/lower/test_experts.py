"""``experts``: standard ops, dynamic batch, exact against the contract's reference."""

import pytest
from graphs import NODES, assert_matches, batch_dim, contract_model, op_types, random_feeds, run_onnxruntime, \
    run_reference

from dyconv_deploy.lower.experts import group_major, lower_experts


@pytest.mark.parametrize("node", NODES, ids=str)
def test_experts_matches_reference_at_any_batch(node):
    model = contract_model(node)
    lowered = lower_experts(model)
    for batch in (1, 3):
        feeds = random_feeds(model, batch)
        assert_matches(run_onnxruntime(lowered, feeds), run_reference(model, feeds))
    ops = op_types(lowered)
    assert "DynamicConv2d" not in ops
    depthwise = node.c == node.groups and not node.spatial
    # S adds the one-hot unfold; a depthwise node runs one constant-weight Conv per expert
    assert ops.count("Conv") == (2 if node.spatial else node.experts if depthwise else 1)
    assert {o.domain for o in lowered.opset_import} == {""}
    assert batch_dim(lowered) == "batch"


def test_group_major_orders_experts_inside_each_group():
    import numpy as np

    weight = np.arange(2 * 4).reshape(2, 4)  # K=2 experts, M=4 channels, 2 groups
    assert group_major(weight, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]

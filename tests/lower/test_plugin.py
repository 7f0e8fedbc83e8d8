"""``plugin``: the contract node kept, tagged for TensorRT's ONNX parser, still exact on the reference."""

import numpy as np
import pytest
from graphs import NODES, batch_dim, contract_model, random_feeds, run_reference

from dyconv_deploy.lower.plugin import lower_plugin
from dyconv_deploy.ops.contract import DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION


@pytest.mark.parametrize("node", [n for n in NODES if n.spatial or not n.bias], ids=str)
def test_plugin_tags_the_node_and_keeps_its_inputs(node):
    model = contract_model(node)
    lowered = lower_plugin(model)
    (original,) = [n for n in model.graph.node if n.domain == DOMAIN]
    (tagged,) = [n for n in lowered.graph.node if n.domain == DOMAIN]
    assert list(tagged.input) == list(original.input)
    attributes = {a.name: a.s.decode() for a in tagged.attribute if a.name.startswith("plugin_")}
    assert attributes == {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}
    assert batch_dim(lowered) == "batch"
    feeds = random_feeds(model, 2)
    np.testing.assert_array_equal(run_reference(lowered, feeds)[0], run_reference(model, feeds)[0])
